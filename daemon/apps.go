package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/peerd/peerd/apps"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/upgrade"
)

// TagAppPrefix starts the tag a node advertises for each application it
// runs: "a.NAME" = "VERSION,STATE,ADDR". The cluster's view of every
// node's applications, and each application's peers list, come from it.
const TagAppPrefix = "a."

// TagAppProtocolPrefix starts the tag with the protocol range, "MIN-MAX",
// of the application version a node runs, where its bundle declared one. A
// tag of its own rather than a fourth field of "a.NAME", which agents that
// read three fields would take as part of the address.
const TagAppProtocolPrefix = "ap."

// EnvAppHandover carries the running applications from one peerd image to
// the next across a re-exec (JSON list of apps.Handover).
const EnvAppHandover = "PEERD_APP_HANDOVER"

// appSyncInterval paces publishing app state and peers lists.
const appSyncInterval = 250 * time.Millisecond

// startApps starts a supervisor per configured application, adopting the
// instances the previous image handed over.
func (a *Agent) startApps(ctx context.Context) error {
	a.appTags = map[string]string{}
	handovers := map[string]*apps.Handover{}
	for i := range a.opts.AppHandovers {
		h := a.opts.AppHandovers[i]
		handovers[h.Name] = &h
	}
	for _, cfg := range a.cfg.Apps {
		sup, err := apps.New(cfg, a.cfg.DataDir, a.opts.Logger)
		if err != nil {
			return err
		}
		a.apps = append(a.apps, sup)
	}
	for _, sup := range a.apps {
		h := handovers[sup.Name()]
		delete(handovers, sup.Name())
		if err := sup.Start(ctx, h); err != nil {
			return err
		}
	}
	// Advertise the apps before their engines look for plans in the tags.
	a.syncApps()
	for _, sup := range a.apps {
		// The engine reads what runs to resume an interrupted rollout step.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := sup.Started(wctx)
		cancel()
		if err != nil {
			a.log.Warn("application not started in time; its rollout engine starts anyway", "app", sup.Name(), "err", err)
		}
		e, err := a.newAppEngine(sup)
		if err != nil {
			return err
		}
		if err := e.Start(ctx); err != nil {
			return err
		}
		a.appMu.Lock()
		if a.appEngines == nil {
			a.appEngines = map[string]*upgrade.Engine{}
		}
		a.appEngines[sup.Name()] = e
		a.appMu.Unlock()
	}
	for name, h := range handovers {
		// The app left the config while peerd re-executed: stop it.
		for _, fd := range h.Listeners {
			syscall.Close(fd)
		}
		if h.PID <= 0 {
			continue // only its listeners were handed over
		}
		a.log.Warn("stopping an application no longer configured", "app", name, "pid", h.PID)
		if p, err := os.FindProcess(h.PID); err == nil {
			_ = p.Signal(os.Interrupt)
		}
	}
	if len(a.apps) == 0 {
		return nil
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(appSyncInterval)
		defer t.Stop()
		for {
			a.syncApps()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// syncApps advertises each application's state and gives it its peers:
// every alive member that runs it, this node included.
func (a *Agent) syncApps() {
	members := a.cluster.Members()
	for _, sup := range a.apps {
		// Advertised while configured, running or not: the app's engine
		// and peers lists count the nodes that have it.
		st := sup.Status()
		a.advertiseApp(sup.Name(), TagAppPrefix+sup.Name(), strings.Join([]string{st.Version, st.State, st.Address}, ","))
		a.advertiseApp(sup.Name(), TagAppProtocolPrefix+sup.Name(), st.Protocol)
		var peers []apps.Peer
		for _, m := range members {
			app, ok := parseAppTag(m, sup.Name())
			if !ok || m.Status != "alive" || app.Address == "" || app.Version == "" {
				continue
			}
			peers = append(peers, apps.Peer{Name: m.Name, Addr: app.Address, Version: app.Version})
		}
		if err := sup.SetPeers(peers); err != nil {
			a.log.Warn("tell app its peers", "app", sup.Name(), "err", err)
		}
	}
}

// advertiseApp sets one of an application's tags ("" removes it). Only a
// change is gossiped: every SetTag is a cluster-wide update.
func (a *Agent) advertiseApp(name, key, value string) {
	if a.appTags[key] == value { // a tag never set reads "", as a removed one
		return
	}
	if err := a.cluster.SetTag(key, value); err != nil {
		a.log.Warn("advertise app state", "app", name, "err", err)
		return
	}
	a.appTags[key] = value
}

// parseAppTag reads member m's tag for the application name. An address
// without a host (":8080", "0.0.0.0:8080") is on the member's gossip host.
func parseAppTag(m cluster.Member, name string) (api.App, bool) {
	v, ok := m.Tags[TagAppPrefix+name]
	if !ok {
		return api.App{}, false
	}
	parts := strings.SplitN(v, ",", 3)
	for len(parts) < 3 {
		parts = append(parts, "")
	}
	app := api.App{Node: m.Name, Name: name, Version: parts[0], State: parts[1], Address: parts[2],
		Protocol: m.Tags[TagAppProtocolPrefix+name]}
	if host, port, err := net.SplitHostPort(app.Address); err == nil {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			if mh, _, err := net.SplitHostPort(m.Addr); err == nil {
				app.Address = net.JoinHostPort(mh, port)
			}
		}
	}
	return app, true
}

// appRows lists every member's applications, as their tags say.
func (a *Agent) appRows() []api.App {
	var rows []api.App
	for _, m := range a.cluster.Members() {
		if m.Status == "left" {
			continue
		}
		for k := range m.Tags {
			name, ok := strings.CutPrefix(k, TagAppPrefix)
			if !ok {
				continue
			}
			app, _ := parseAppTag(m, name)
			app.NodeStatus = m.Status
			rows = append(rows, app)
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Name != rows[j].Name {
			return rows[i].Name < rows[j].Name
		}
		return rows[i].Node < rows[j].Node
	})
	return rows
}

// DetachApps hands the running applications over for a re-exec: they keep
// running, and the next image adopts them (see EnvAppHandover). Call it
// right before Close when the agent re-execs itself.
func (a *Agent) DetachApps() []apps.Handover {
	a.closeAppEngines()
	var hs []apps.Handover
	for _, sup := range a.apps {
		if h := sup.Detach(); h != nil {
			hs = append(hs, *h)
		}
	}
	// a.apps stays (the sync loop still reads it until Close): closing a
	// detached supervisor stops nothing.
	return hs
}

// closeApps stops every application (and first its engine).
func (a *Agent) closeApps() {
	a.closeAppEngines()
	for _, sup := range a.apps {
		sup.Close()
	}
}

// AppHandoverEnv encodes hand-overs for EnvAppHandover.
func AppHandoverEnv(hs []apps.Handover) string {
	b, _ := json.Marshal(hs)
	return EnvAppHandover + "=" + string(b)
}

// AppHandoversFromEnv reads and removes EnvAppHandover, and marks the
// applications' listeners close-on-exec at once: nothing peerd starts
// before their supervisors take them may inherit them.
func AppHandoversFromEnv() ([]apps.Handover, error) {
	v := os.Getenv(EnvAppHandover)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(EnvAppHandover)
	var hs []apps.Handover
	if err := json.Unmarshal([]byte(v), &hs); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvAppHandover, err)
	}
	for _, h := range hs {
		for _, fd := range h.Listeners {
			syscall.CloseOnExec(fd)
		}
	}
	return hs, nil
}
