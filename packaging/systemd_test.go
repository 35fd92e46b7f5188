package packaging_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// systemdScript runs inside the booted container as a oneshot unit: it
// drives peerd.service through systemctl and writes what it saw as
// key=value lines to /root/result.txt, then powers the container off.
// Loops poll a condition with a deadline; nothing waits a fixed time.
const systemdScript = `#!/bin/sh
out=/root/result.txt
: > $out
say() { echo "$1=$2" >> $out; }
show() { systemctl show -P "$1" peerd.service; }
wait_active() {
	i=0
	while [ "$(show ActiveState)" != active ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
}
version() { peerd info 2>/dev/null | awk '$1 == "version:" { print $2 }'; }
wait_version() {
	i=0
	while [ "$(version)" != "$1" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
}

systemctl start peerd.service; say start $?
wait_active
if [ "$(show ActiveState)" != active ]; then
	journalctl -u peerd.service --no-pager > /root/journal.txt 2>&1
	systemctl poweroff --no-block
	exit 1
fi
say active "$(show ActiveState)/$(show SubState)"
say type "$(show Type)"
say status "$(show StatusText)"
say watchdog "$(show WatchdogUSec)"
say user "$(ps -o user= -p "$(show MainPID)")"
pid=$(show MainPID)
say version1 "$(version)"

peerd upgrade --to 2.0.0 --artifact /root/peerd-2.0.0 --allow-outage --min-healthy 1s --deadline 2m > /root/upgrade.txt 2>&1
say upgrade $?
wait_version 2.0.0
say version2 "$(version)"
say samepid "$([ "$(show MainPID)" = "$pid" ] && echo yes || echo "no: $pid -> $(show MainPID)")"
say active2 "$(show ActiveState)/$(show SubState)"
say status2 "$(show StatusText)"
# The edited conffile is expected; nothing else may differ.
say dpkgverify "$(dpkg --verify peerd | grep -v ' c /etc/peerd/peerd.hcl$' | tr '\n' ' ')"

systemctl reload peerd.service; say reload $?
systemctl restart peerd.service; say restart $?
wait_active
wait_version 2.0.0
say version3 "$(version)"

systemctl stop peerd.service; say stop $?
say stopped "$(show ActiveState)"
journalctl -u peerd.service --no-pager > /root/journal.txt 2>&1
say done yes
systemctl poweroff --no-block
`

const systemdTestUnit = `[Unit]
Description=peerd packaging test
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/root/systemd-test.sh
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
`

// TestSystemd boots a Debian root with systemd-nspawn (its own systemd as
// PID 1, private network) and runs peerd.service there: READY and STATUS
// as systemctl sees them, a self-upgrade under systemd (re-exec, same main
// PID, READY again), reload, restart into the version store. Opt-in
// (`make test-systemd`): never boot systemd on the shared filesystem.
func TestSystemd(t *testing.T) {
	if os.Getenv("PEERD_TEST_SYSTEMD") == "" {
		t.Skip("opt-in: run 'make test-systemd' (boots a container with systemd-nspawn)")
	}
	need(t, "systemd-nspawn", "systemd-container")
	deb, _ := packages(t, "1.0.0")
	root := debianRootNoProc(t)
	v2 := filepath.Join(t.TempDir(), "peerd")
	out, err := exec.Command("make", "-s", "-C", repo, "build", "VERSION=2.0.0", "PROTOCOL_MAX=2", "OUT="+v2).CombinedOutput()
	require.NoError(t, err, "%s", out)
	copyInto(t, root, deb, "/tmp/peerd.deb")
	copyInto(t, root, v2, "/root/peerd-2.0.0")
	in(t, root, "dpkg", "-i", "/tmp/peerd.deb")

	// A one-node cluster on the container's own loopback (the operator's
	// edit of the conffile).
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/peerd/peerd.hcl"), []byte(
		"node = \"nspawn\"\nbind = \"127.0.0.1:7946\"\ndata_dir = \"/var/lib/peerd\"\ngossip_profile = \"fast\"\nallow_unsigned = true\nallow_outage = true\n"), 0o640))
	require.NoError(t, os.WriteFile(filepath.Join(root, "root/systemd-test.sh"), []byte(systemdScript), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/systemd/system/peerd-test.service"), []byte(systemdTestUnit), 0o644))
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	require.NoError(t, os.MkdirAll(wants, 0o755))
	require.NoError(t, os.Symlink("/etc/systemd/system/peerd-test.service", filepath.Join(wants, "peerd-test.service")))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	boot := exec.CommandContext(ctx, "systemd-nspawn", "--boot", "--register=no", "--keep-unit",
		"--private-network", "--quiet", "--directory", root)
	var console bytes.Buffer
	boot.Stdout, boot.Stderr = &console, &console
	boot.WaitDelay = 10 * time.Second
	err = boot.Run()
	journal, _ := os.ReadFile(filepath.Join(root, "root/journal.txt"))
	upgradeOut, _ := os.ReadFile(filepath.Join(root, "root/upgrade.txt"))
	res := readResult(t, filepath.Join(root, "root/result.txt"))
	require.Equal(t, "yes", res["done"], "the test unit did not finish (nspawn: %v)\nresult: %v\nconsole:\n%s\njournal:\n%s", err, res, tail(console.Bytes(), 4000), journal)
	t.Logf("result: %v\nupgrade:\n%s", res, upgradeOut)

	assert.Equal(t, "0", res["start"])
	assert.Equal(t, "active/running", res["active"], "READY=1 reached systemd (Type=notify)")
	assert.Equal(t, "notify", res["type"])
	assert.NotEmpty(t, res["status"], "STATUS= is shown by systemctl")
	assert.Equal(t, "30s", res["watchdog"])
	assert.Equal(t, "peerd", res["user"])
	assert.Equal(t, "1.0.0", res["version1"])
	assert.Equal(t, "0", res["upgrade"], "peerd upgrade under systemd:\n%s", upgradeOut)
	assert.Equal(t, "2.0.0", res["version2"])
	assert.Equal(t, "yes", res["samepid"], "the self-upgrade re-executed in place")
	assert.Equal(t, "active/running", res["active2"])
	assert.NotEmpty(t, res["status2"])
	assert.Empty(t, res["dpkgverify"], "no file the package owns changed")
	assert.Equal(t, "0", res["reload"])
	assert.Equal(t, "0", res["restart"])
	assert.Equal(t, "2.0.0", res["version3"], "after a restart, /usr/bin/peerd hands over to the version store")
	assert.Equal(t, "0", res["stop"])
	assert.Equal(t, "inactive", res["stopped"])
	if t.Failed() {
		t.Logf("journal:\n%s", journal)
	}
}

func readResult(t *testing.T, path string) map[string]string {
	t.Helper()
	res := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return res
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			res[k] = v
		}
	}
	return res
}
