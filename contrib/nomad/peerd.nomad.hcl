# peerd as a Nomad system job: one agent on every eligible client node.
#
#   nomad job run \
#     -var 'retry_join=["10.0.0.11", "10.0.0.12", "10.0.0.13"]' \
#     -var "trust_key=$(cat peerd.pub)" \
#     peerd.nomad.hcl
#
# What peerd reads from the Nomad environment, and how to operate it, is in
# README.md next to this file.
#
# UPGRADES: two paths, for two different things.
#
#   New peerd versions: peerd's own rolling upgrade, in place.
#     nomad alloc exec -task peerd <any alloc> /local/peerd upgrade \
#       --to 2.0.0 --artifact https://.../peerd --signature https://.../peerd.minisig
#   Every agent verifies the artifact, installs it in its version store
#   (DATA_DIR/versions) and re-execs into it with the same PID. Nomad sees no
#   change: the allocations keep running and the job is not modified. peerd
#   does what Nomad's update block cannot: waves come from the Serf member
#   list (with --by-tag dc, one datacenter at a time), a lease agreed over
#   Serf keeps one wave offline at most, each upgraded node must pass the
#   health gate before the next wave starts, a node that fails is rolled back
#   and the rollout halts, and a version that cannot speak the cluster's
#   active protocol is refused before any node goes offline.
#
#   Changes to this job (config template, env, resources, var.version):
#   Nomad's update block. Nomad replaces the allocations one client at a time
#   (max_parallel = 1), waits for the health check, and the data dir moves
#   into the new allocation (ephemeral_disk below). That is a restart of each
#   agent, with none of the safeguards above, which is fine for config.
#
#   var.version is the launcher, not the version that runs: at start the
#   artifact's peerd runs the version store's current version when that is
#   newer than itself. Setting var.version older than what peerd upgraded to
#   therefore changes nothing (the store wins, after one restart per node);
#   setting it newer makes Nomad, not peerd, roll out that version (the
#   artifact wins), without the lease, health gate or rollback: don't. After
#   a peerd rollout, set var.version to the version peerd upgraded to, so
#   that new clients, and allocations that lost their data dir, start at it
#   rather than at an old build the cluster's active protocol may refuse.

variable "version" {
  type        = string
  default     = "1.0.0"
  description = "The peerd release the artifact is: the launcher (see UPGRADES above)."
}

variable "release_url" {
  type        = string
  default     = "https://github.com/peerd/peerd/releases/download"
  description = "Where goreleaser's archives and checksums.txt are, under v<version>/."
}

variable "retry_join" {
  type        = list(string)
  description = "Gossip addresses (HOST or HOST:PORT) of a few clients. Each agent retries them until one answers; a restarted agent also rejoins the peers it knew."
}

variable "trust_key" {
  type        = string
  description = "A minisign public key (the .pub file's text, from 'peerd sign --generate'). Upgrade artifacts must be signed with its key."
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

job "peerd" {
  type        = "system"
  datacenters = var.datacenters

  # Job changes only (see UPGRADES): one client at a time, and the next only
  # once the replaced agent has passed its check for a while. Releases
  # before system jobs had deployments enforce only max_parallel and
  # stagger, so stagger is set too.
  update {
    max_parallel     = 1
    stagger          = "30s"
    health_check     = "checks"
    min_healthy_time = "30s"
    healthy_deadline = "5m"
    auto_revert      = true
  }

  group "peerd" {
    # Host networking with static ports: members reach each other at stable
    # addresses (the retry_join seeds, and the peers each agent remembers
    # across restarts), and the port peerd binds is the port peers dial.
    # Nomad exports NOMAD_IP_serf/NOMAD_PORT_serf and NOMAD_IP_http/
    # NOMAD_PORT_http for these labels; peerd binds them. Serf gossips over
    # TCP and UDP on the serf port.
    network {
      mode = "host"
      port "serf" {
        static = 7946
      }
      port "http" {
        static = 7947
      }
    }

    # The data dir (Serf snapshot, remembered peers, rollout state and
    # leases, and the version store with the upgraded binaries) must outlive
    # task restarts and job updates. Only alloc/data (and local/) move into
    # a replacement allocation, so PEERD_DATA_DIR is under
    # NOMAD_ALLOC_DIR/data. sticky moves that into the replacement
    # allocation on the same client (a system job's replacement always is);
    # migrate would copy it from another client, and is set so that the data
    # is carried over whatever the placement. This is best effort: a stopped
    # or garbage-collected allocation's data is gone, and the agent then
    # starts at var.version and finds the cluster through retry_join. For a
    # data dir that outlives that too, use a host volume instead: add
    # `host_volume "peerd" { path = "/var/lib/peerd" }` to every client, then
    #   volume "peerd" { type = "host", source = "peerd" }
    # here, `volume_mount { volume = "peerd", destination = "/var/lib/peerd" }`
    # in the task, and PEERD_DATA_DIR = "/var/lib/peerd".
    ephemeral_disk {
      sticky  = true
      migrate = true
      size    = 300
    }

    # A crashed agent comes back after a short delay. A self-upgrade is not a
    # restart Nomad sees: the agent re-execs in place (restart = "reexec"
    # below). With restart = "supervisor" it would exit 75 instead, which
    # Nomad counts as a failure against these attempts and delays.
    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    # The peer HTTP API's health endpoint. No check_restart: a node in the
    # middle of its upgrade wave is peerd's to watch (its health gate rolls a
    # bad version back); a restart by Nomad at that moment would fight it.
    service {
      provider = "nomad"
      name     = "peerd"
      port     = "http"

      check {
        name     = "peerd health"
        type     = "http"
        path     = "/v1/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "peerd" {
      # exec, not raw_exec: peerd needs no privilege (ports above 1024, its
      # data in the allocation dir), so it can have exec's chroot and
      # cgroups; the release binary is static and needs nothing from the
      # chroot. raw_exec (disabled on clients by default, and running tasks
      # as the Nomad agent's user) would only be for an agent that must
      # manage software outside its allocation.
      driver = "exec"

      # The launcher; goreleaser's archive has the binary at its root.
      artifact {
        source      = "${var.release_url}/v${var.version}/peerd_${var.version}_linux_${attr.cpu.arch}.tar.gz"
        destination = "local/"
        options {
          checksum = "file:${var.release_url}/v${var.version}/checksums.txt"
        }
      }

      config {
        command = "local/peerd"
        args    = ["agent", "--config", "${NOMAD_TASK_DIR}/peerd.hcl"]
      }

      # Node name and addresses are not set here: peerd takes them from the
      # allocation (NOMAD_NODE_NAME, NOMAD_IP_*/NOMAD_PORT_*) unless the config
      # file, a PEERD_* variable or a flag sets them. Nomad exports no node
      # name, so the job passes the client's.
      env {
        NOMAD_NODE_NAME = "${node.unique.name}"
        PEERD_DATA_DIR  = "${NOMAD_ALLOC_DIR}/data/peerd"
      }

      template {
        destination   = "local/peerd.hcl"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          retry_join = ${jsonencode(var.retry_join)}
          encrypt    = "{{ with nomadVar "nomad/jobs/peerd" }}{{ .gossip_key }}{{ end }}"
          restart    = "reexec"
          trust_key  = ["{{ env "NOMAD_TASK_DIR" }}/peerd.pub"]
          tags       = { dc = "{{ env "NOMAD_DC" }}" }
        EOT
      }

      template {
        destination = "local/peerd.pub"
        change_mode = "noop"
        data        = var.trust_key
      }

      # SIGTERM: leave the cluster gracefully (peerd gives up after 5s), so
      # peers see "left" rather than "failed" and a rollout does not wait.
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
