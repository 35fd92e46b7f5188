package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// rollTool is one way to roll a fleet to v2: roll returns the CPU time of
// the orchestrator's processes (with the children they waited for) and
// their output.
type rollTool struct {
	name string
	roll func(ctx context.Context, f *benchFleet) (time.Duration, string, error)
	// skip says why the tool cannot run on this machine; "" when it can.
	skip string
}

func rollTools() []rollTool {
	tools := []rollTool{{name: "peerd", roll: rollPeerd}, {name: "ansible", roll: rollAnsible}, {name: "naive", roll: rollNaive}}
	if _, err := exec.LookPath("ansible-playbook"); err != nil {
		tools[1].skip = "no ansible-playbook on PATH (apt-get install ansible)"
	}
	if only := os.Getenv("BENCH_TOOLS"); only != "" {
		for i := range tools {
			if !slices.Contains(strings.Split(only, ","), tools[i].name) {
				tools[i].skip = "not in BENCH_TOOLS=" + only
			}
		}
	}
	return tools
}

// rollPeerd is `peerd upgrade` on the first agent, in waves of 20 %.
func rollPeerd(ctx context.Context, f *benchFleet) (time.Duration, string, error) {
	cmd := exec.CommandContext(ctx, f.agents[0].bin, "upgrade", "--to", "2.0.0", "--artifact", bins["v2"],
		"--max-unavailable", "20%", "--min-healthy", f.dwell.String(), "--deadline", "2m")
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+f.agents[0].socket())
	out, err := cmd.CombinedOutput()
	return processCPU(cmd.ProcessState), string(out), err
}

// ansiblePlaybook is what an operator would write for the same rollout:
// one host per agent, 20 % of them at a time; each stopped, its binary
// replaced, started, waited for until healthy; a pause of the dwell after
// each batch. Ansible's retry delay is whole seconds.
const ansiblePlaybook = `- hosts: fleet
  gather_facts: false
  serial: "20%%"
  tasks:
    - name: stop the agent
      command: "{{ dir }}/stop.sh"
    - name: replace the binary
      copy:
        src: %s
        dest: "{{ dir }}/bin/peerd"
        mode: "0755"
    - name: start the agent
      command: "{{ dir }}/start.sh"
    - name: wait until it is healthy
      uri:
        url: "http://{{ http }}/v1/health"
      register: health
      until: health.status == 200
      retries: 120
      delay: 1
    - name: dwell
      pause:
        seconds: %d
`

// rollAnsible runs the playbook over an inventory of the fleet, local
// connection, with as many forks as a batch has hosts.
func rollAnsible(ctx context.Context, f *benchFleet) (time.Duration, string, error) {
	var inv strings.Builder
	inv.WriteString("[fleet]\n")
	for _, a := range f.agents {
		fmt.Fprintf(&inv, "%s ansible_connection=local ansible_python_interpreter=/usr/bin/python3 dir=%s http=%s\n", a.name, a.dir, a.httpAddr())
	}
	invPath, playPath := filepath.Join(f.dir, "inventory.ini"), filepath.Join(f.dir, "rollout.yml")
	if err := os.WriteFile(invPath, []byte(inv.String()), 0o644); err != nil {
		return 0, "", err
	}
	if err := os.WriteFile(playPath, []byte(fmt.Sprintf(ansiblePlaybook, bins["v2"], int(f.dwell.Seconds()))), 0o644); err != nil {
		return 0, "", err
	}
	cmd := exec.CommandContext(ctx, "ansible-playbook", "-i", invPath, "-f", fmt.Sprint(len(f.batches[0])), playPath)
	cmd.Dir = f.dir
	cmd.Env = append(os.Environ(), "ANSIBLE_NOCOLOR=1", "ANSIBLE_RETRY_FILES_ENABLED=0", "ANSIBLE_HOST_KEY_CHECKING=0",
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(f.dir, "tmp"), "ANSIBLE_REMOTE_TMP="+filepath.Join(f.dir, "tmp"),
		"ANSIBLE_HOME="+filepath.Join(f.dir, "home"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return processCPU(cmd.ProcessState), out.String(), err
}

// naiveScript upgrades each batch's nodes in parallel, then sleeps the
// dwell: the shell loop an operator writes before any tool.
const naiveScript = `#!/bin/bash
set -u
one() { # dir http
	"$1/stop.sh" && cp %s "$1/bin/peerd.new" && mv "$1/bin/peerd.new" "$1/bin/peerd" && "$1/start.sh" || return 1
	until curl -fsS -o /dev/null --max-time 2 "http://$2/v1/health"; do sleep 0.1; done
}
while read -r batch; do
	pids=()
	for node in $batch; do
		one "${node%%%%,*}" "${node#*,}" & pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || exit 1; done
	sleep %g
done <<'EOF'
%sEOF
`

func rollNaive(ctx context.Context, f *benchFleet) (time.Duration, string, error) {
	var batches strings.Builder
	for _, batch := range f.batches {
		for i, a := range batch {
			if i > 0 {
				batches.WriteString(" ")
			}
			batches.WriteString(a.dir + "," + a.httpAddr())
		}
		batches.WriteString("\n")
	}
	path := filepath.Join(f.dir, "naive.sh")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(naiveScript, shellQuote(bins["v2"]), f.dwell.Seconds(), batches.String())), 0o755); err != nil {
		return 0, "", err
	}
	cmd := exec.CommandContext(ctx, "bash", path)
	out, err := cmd.CombinedOutput()
	return processCPU(cmd.ProcessState), string(out), err
}
