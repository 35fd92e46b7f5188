// Package nomad_test checks the Nomad job in this directory against what
// the agent reads: the job is parsed with HCL's native syntax (Nomad's own
// parser is not a dependency) and its structure, env and rendered config
// file are checked.
package nomad_test

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

const jobFile = "peerd.nomad.hcl"

type job struct {
	t   *testing.T
	src []byte
	job *hclsyntax.Block
}

func parseJob(t *testing.T) *job {
	t.Helper()
	src, err := os.ReadFile(jobFile)
	require.NoError(t, err)
	f, diags := hclparse.NewParser().ParseHCL(src, jobFile)
	require.False(t, diags.HasErrors(), "%s", diags)
	body := f.Body.(*hclsyntax.Body)
	j := &job{t: t, src: src}
	j.job = j.block(body, "job", "peerd")
	return j
}

// block is body's only block of this type (and labels).
func (j *job) block(body *hclsyntax.Body, typ string, labels ...string) *hclsyntax.Block {
	j.t.Helper()
	found := j.blocks(body, typ, labels...)
	require.Len(j.t, found, 1, "want one %s block %q", typ, labels)
	return found[0]
}

func (j *job) blocks(body *hclsyntax.Body, typ string, labels ...string) []*hclsyntax.Block {
	var found []*hclsyntax.Block
	for _, b := range body.Blocks {
		if b.Type == typ && (len(labels) == 0 || strings.Join(b.Labels, "\x00") == strings.Join(labels, "\x00")) {
			found = append(found, b)
		}
	}
	return found
}

func (j *job) attr(b *hclsyntax.Block, name string) hclsyntax.Expression {
	j.t.Helper()
	a, ok := b.Body.Attributes[name]
	require.True(j.t, ok, "%s block %q has no %s", b.Type, b.Labels, name)
	return a.Expr
}

// value is a constant attribute's value.
func (j *job) value(b *hclsyntax.Block, name string) cty.Value {
	j.t.Helper()
	v, diags := j.attr(b, name).Value(nil)
	require.False(j.t, diags.HasErrors(), "%s.%s: %s", b.Type, name, diags)
	return v
}

func (j *job) str(b *hclsyntax.Block, name string) string {
	j.t.Helper()
	v := j.value(b, name)
	require.Equal(j.t, cty.String, v.Type(), "%s.%s", b.Type, name)
	return v.AsString()
}

// text is a string that Nomad interpolates at run time (${node...},
// ${NOMAD_...}, ${var...}), as written between its quotes.
func (j *job) text(expr hclsyntax.Expression) string {
	raw := string(expr.Range().SliceBytes(j.src))
	return strings.TrimSuffix(strings.TrimPrefix(raw, `"`), `"`)
}

func (j *job) group() *hclsyntax.Block { return j.block(j.job.Body, "group", "peerd") }
func (j *job) task() *hclsyntax.Block  { return j.block(j.group().Body, "task", "peerd") }

// env is the task's env block, as written.
func (j *job) env() map[string]string {
	env := map[string]string{}
	for name, a := range j.block(j.task().Body, "env").Body.Attributes {
		env[name] = j.text(a.Expr)
	}
	return env
}

// args is the task's command line, as written.
func (j *job) args() []string {
	j.t.Helper()
	tuple, ok := j.attr(j.block(j.task().Body, "config"), "args").(*hclsyntax.TupleConsExpr)
	require.True(j.t, ok, "args is a list")
	var args []string
	for _, e := range tuple.Exprs {
		args = append(args, j.text(e))
	}
	return args
}

// template is the task's template block rendering to dest.
func (j *job) template(dest string) *hclsyntax.Block {
	j.t.Helper()
	for _, b := range j.blocks(j.task().Body, "template") {
		if j.str(b, "destination") == dest {
			return b
		}
	}
	j.t.Fatalf("no template renders %s", dest)
	return nil
}

func TestJobShape(t *testing.T) {
	j := parseJob(t)
	assert.Equal(t, "system", j.str(j.job, "type"), "one agent per client node")
	assert.Equal(t, int64(1), bigInt(t, j.value(j.block(j.job.Body, "update"), "max_parallel")),
		"job changes replace one agent at a time")

	g := j.group()
	network := j.block(g.Body, "network")
	assert.Equal(t, "host", j.str(network, "mode"), "members must reach each other at the address peerd binds")
	assert.Equal(t, int64(7946), bigInt(t, j.value(j.block(network.Body, "port", daemon.NomadSerfPort), "static")))
	assert.Equal(t, int64(daemon.DefaultHTTPPort), bigInt(t, j.value(j.block(network.Body, "port", daemon.NomadHTTPPort), "static")))

	disk := j.block(g.Body, "ephemeral_disk")
	assert.True(t, j.value(disk, "sticky").True(), "the data dir must move into a replacement allocation")
	assert.True(t, j.value(disk, "migrate").True())

	svc := j.block(g.Body, "service")
	assert.Equal(t, daemon.NomadHTTPPort, j.str(svc, "port"))
	check := j.block(svc.Body, "check")
	assert.Equal(t, "http", j.str(check, "type"))
	assert.Equal(t, "/v1/health", j.str(check, "path"))
	assert.Empty(t, j.blocks(svc.Body, "check_restart"), "peerd's health gate, not Nomad, handles a node mid-upgrade")
	assert.Empty(t, j.blocks(check.Body, "check_restart"))

	task := j.task()
	assert.Contains(t, []string{"exec", "raw_exec"}, j.str(task, "driver"))
	assert.Equal(t, "SIGTERM", j.str(task, "kill_signal"), "peerd leaves gracefully on SIGTERM")
	kill, err := time.ParseDuration(j.str(task, "kill_timeout"))
	require.NoError(t, err)
	assert.Greater(t, kill, 5*time.Second, "longer than peerd's 5s leave")
	assert.LessOrEqual(t, kill, 30*time.Second, "Nomad clients' default max_kill_timeout")

	artifact := j.block(task.Body, "artifact")
	source := j.text(j.attr(artifact, "source"))
	assert.Contains(t, source, "${var.version}")
	assert.Contains(t, source, "${attr.cpu.arch}", "one archive per architecture")
	assert.True(t, strings.HasPrefix(j.text(j.attr(j.block(artifact.Body, "options"), "checksum")), "file:"),
		"the archive is checked against the release's checksums.txt")
	dest := j.str(artifact, "destination")
	assert.Equal(t, path.Join(dest, "peerd"), j.str(j.block(task.Body, "config"), "command"),
		"the task runs the artifact's binary (the launcher)")

	args := j.args()
	require.NotEmpty(t, args)
	assert.Equal(t, "agent", args[0])
}

// The job leaves node name and addresses to peerd's Nomad layer, and gives
// it what that layer reads.
func TestJobEnvMatchesAgent(t *testing.T) {
	j := parseJob(t)
	env := j.env()
	assert.Equal(t, "${node.unique.name}", env[daemon.NomadNodeNameEnv],
		"Nomad exports no node name: the job passes the client's")
	for name := range env {
		if strings.HasPrefix(name, "NOMAD_") {
			assert.Equal(t, daemon.NomadNodeNameEnv, name, "the job must not shadow a variable Nomad sets")
		}
	}
	for _, name := range []string{"PEERD_NODE", "PEERD_BIND", "PEERD_ADVERTISE", "PEERD_HTTP_ADDR"} {
		assert.NotContains(t, env, name, "would override the Nomad layer")
	}
	for _, a := range j.args() {
		for _, flag := range []string{"--node", "--bind", "--advertise", "--http-addr"} {
			assert.False(t, a == flag || strings.HasPrefix(a, flag+"="), "args set %s", flag)
		}
	}
	assert.True(t, strings.HasPrefix(env["PEERD_DATA_DIR"], "${NOMAD_ALLOC_DIR}/data/"),
		"only alloc/data moves into a replacement allocation: %q", env["PEERD_DATA_DIR"])

	// What the agent makes of the environment Nomad gives this job's task
	// (exec driver: the allocation dir is /alloc inside the chroot).
	network := j.block(j.group().Body, "network")
	port := func(label string) string {
		return j.value(j.block(network.Body, "port", label), "static").AsBigFloat().String()
	}
	nomad := map[string]string{
		daemon.NomadAllocIDEnv:               "5b3d7f7e-1c2a-4f7e-9a0b-2f6c1d0e9a11",
		"NOMAD_ALLOC_DIR":                    "/alloc",
		daemon.NomadNodeNameEnv:              "client-1", // ${node.unique.name}
		"NOMAD_IP_" + daemon.NomadSerfPort:   "10.0.0.5",
		"NOMAD_PORT_" + daemon.NomadSerfPort: port(daemon.NomadSerfPort),
		"NOMAD_IP_" + daemon.NomadHTTPPort:   "10.0.0.5",
		"NOMAD_PORT_" + daemon.NomadHTTPPort: port(daemon.NomadHTTPPort),
	}
	cfg := daemon.DefaultConfig()
	cfg.Encrypt, _ = cluster.GenerateKey() // the config template's (TestJobConfigFile)
	daemon.ApplyNomadEnv(&cfg, func(k string) string { return nomad[k] })
	cfg.DataDir = strings.ReplaceAll(env["PEERD_DATA_DIR"], "${NOMAD_ALLOC_DIR}", nomad["NOMAD_ALLOC_DIR"])
	assert.Equal(t, "client-1", cfg.Node)
	assert.Equal(t, "10.0.0.5:7946", cfg.Bind)
	assert.Equal(t, "10.0.0.5:7947", cfg.HTTPAddress())
	assert.NoError(t, cfg.Validate())

	// raw_exec sees the host's path of the allocation dir: the control
	// socket under it must still fit a unix socket path.
	cfg.DataDir = strings.ReplaceAll(env["PEERD_DATA_DIR"], "${NOMAD_ALLOC_DIR}",
		"/opt/nomad/data/alloc/5b3d7f7e-1c2a-4f7e-9a0b-2f6c1d0e9a11/alloc")
	assert.NoError(t, cfg.Validate())
}

// The config file the job renders is one peerd accepts, and does not set
// what the Nomad layer provides.
func TestJobConfigFile(t *testing.T) {
	j := parseJob(t)
	args := j.args()
	require.Len(t, args, 3)
	require.Equal(t, "--config", args[1])
	require.True(t, strings.HasPrefix(args[2], "${NOMAD_TASK_DIR}/"), "config in the task's local dir: %q", args[2])
	tmpl := j.template(path.Join("local", strings.TrimPrefix(args[2], "${NOMAD_TASK_DIR}/")))

	// Nomad evaluates ${...} (job variables) when it parses the job...
	ctx := &hcl.EvalContext{
		Variables: map[string]cty.Value{"var": cty.ObjectVal(map[string]cty.Value{
			"retry_join": cty.ListVal([]cty.Value{cty.StringVal("10.0.0.11"), cty.StringVal("10.0.0.12:7946")}),
		})},
		Functions: map[string]function.Function{"jsonencode": stdlib.JSONEncodeFunc},
	}
	v, diags := j.attr(tmpl, "data").Value(ctx)
	require.False(t, diags.HasErrors(), "%s", diags)
	data := v.AsString()
	for _, key := range []string{"node", "bind", "advertise", "http_addr", "data_dir"} {
		assert.NotRegexp(t, `(?m)^\s*`+key+`\s*=`, data, "the config file would override the Nomad layer or PEERD_DATA_DIR")
	}

	// ...and the client renders {{ env "..." }} in the task's environment.
	taskDir := t.TempDir()
	renderEnv := map[string]string{"NOMAD_TASK_DIR": taskDir, "NOMAD_DC": "dc1"}
	data = regexp.MustCompile(`\{\{\s*env\s+"([A-Z_]+)"\s*\}\}`).ReplaceAllStringFunc(data, func(m string) string {
		name := regexp.MustCompile(`"([A-Z_]+)"`).FindStringSubmatch(m)[1]
		val, ok := renderEnv[name]
		assert.True(t, ok, "template reads %s", name)
		return val
	})
	// The gossip key is a Nomad variable the operator puts once:
	//   nomad var put nomad/jobs/peerd gossip_key=$(peerd keygen)
	gossipKey, err := cluster.GenerateKey()
	require.NoError(t, err)
	nomadVar := regexp.MustCompile(`\{\{\s*with nomadVar "nomad/jobs/peerd"\s*\}\}\{\{\s*\.gossip_key\s*\}\}\{\{\s*end\s*\}\}`)
	require.Regexp(t, nomadVar, data, "the gossip key comes from the job's Nomad variable")
	data = nomadVar.ReplaceAllLiteralString(data, gossipKey)
	require.NotContains(t, data, "{{")
	file := filepath.Join(taskDir, "peerd.hcl")
	require.NoError(t, os.WriteFile(file, []byte(data), 0o600))

	// The trust key the config names is the one another template renders.
	j.template("local/peerd.pub")
	require.NoError(t, os.WriteFile(filepath.Join(taskDir, "peerd.pub"), []byte("key"), 0o600))

	cfg := daemon.DefaultConfig()
	require.NoError(t, daemon.LoadFile(file, &cfg))
	assert.Equal(t, []string{"10.0.0.11", "10.0.0.12:7946"}, cfg.RetryJoin)
	assert.Equal(t, daemon.RestartReexec, cfg.Restart, "a self-upgrade re-execs in place: Nomad sees no restart")
	assert.Equal(t, []string{filepath.Join(taskDir, "peerd.pub")}, cfg.TrustKeys)
	assert.Equal(t, map[string]string{"dc": "dc1"}, cfg.Tags)
	assert.Equal(t, gossipKey, cfg.Encrypt)
	cfg.DataDir = t.TempDir()
	assert.NoError(t, cfg.Validate())
}

func bigInt(t *testing.T, v cty.Value) int64 {
	t.Helper()
	require.Equal(t, cty.Number, v.Type())
	i, acc := v.AsBigFloat().Int64()
	require.Zero(t, acc, "want a whole number")
	return i
}
