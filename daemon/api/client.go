package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/peerd/peerd/upgrade"
)

// Client calls an agent's control API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
	target string // the rollout target of /v1/rollout calls; "" is peerd
}

// ForTarget returns a client whose rollout calls are about the managed
// application name (peerd itself when name is "" or "peerd").
func (c *Client) ForTarget(name string) *Client {
	cc := *c
	cc.target = name
	return &cc
}

// NewClient returns a client for the agent serving socket.
func NewClient(socket string) *Client {
	return &Client{
		socket: socket,
		hc: &http.Client{
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", socket)
				},
			},
			Timeout: 5 * time.Minute,
		},
	}
}

// Members lists the members the agent knows; status filters by status when not empty.
// Apps lists every node's managed applications.
func (c *Client) Apps(ctx context.Context) ([]App, error) {
	var out []App
	return out, c.do(ctx, http.MethodGet, "/v1/apps", &out)
}

func (c *Client) Members(ctx context.Context, status string) ([]Member, error) {
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	var out []Member
	return out, c.do(ctx, http.MethodGet, "/v1/members?"+q.Encode(), &out)
}

// ReadAddrs reads the addresses file a ready agent wrote in dataDir (see
// AddrsFile). Check its PID: the file of an agent that has exited stays.
func ReadAddrs(dataDir string) (Addrs, error) {
	var a Addrs
	b, err := os.ReadFile(filepath.Join(dataDir, AddrsFile))
	if err != nil {
		return a, fmt.Errorf("read the agent's addresses: %w", err)
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("read the agent's addresses from %s: %w", filepath.Join(dataDir, AddrsFile), err)
	}
	return a, nil
}

// Info describes the agent's node and cluster.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var out Info
	return out, c.do(ctx, http.MethodGet, "/v1/info", &out)
}

// Leave asks the agent to leave the cluster gracefully and exit. It returns
// once the cluster has been told.
func (c *Client) Leave(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/leave", nil)
}

// Forget unpins a member's identity key on the local agent.
func (c *Client) Forget(ctx context.Context, node string) error {
	return c.do(ctx, http.MethodPost, "/v1/forget/"+url.PathEscape(node), nil)
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.doBody(ctx, method, path, nil, out)
}

func (c *Client) doBody(ctx context.Context, method, path string, body io.Reader, out any) error {
	if c.target != "" && strings.HasPrefix(path, "/v1/rollout/") {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + "target=" + url.QueryEscape(c.target)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://peerd"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no agent answers at socket %s: is the agent running? (point --socket or PEERD_SOCKET at its socket)", c.socket)
		}
		return fmt.Errorf("call agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read agent answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(respBody, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(respBody, out); err != nil {
		return fmt.Errorf("decode agent answer: %w", err)
	}
	return nil
}

// UploadArtifact streams a local file to the agent's artifact store.
func (c *Client) UploadArtifact(ctx context.Context, path string) (Upload, error) {
	f, err := os.Open(path)
	if err != nil {
		return Upload{}, fmt.Errorf("open artifact: %w", err)
	}
	defer f.Close()
	var out Upload
	return out, c.doBody(ctx, http.MethodPost, "/v1/rollout/artifacts", f, &out)
}

// Trigger asks the agent to plan (or dry-run) a rollout.
func (c *Client) Trigger(ctx context.Context, req upgrade.TriggerRequest) (upgrade.TriggerResult, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return upgrade.TriggerResult{}, err
	}
	var out upgrade.TriggerResult
	return out, c.doBody(ctx, http.MethodPost, "/v1/rollout/trigger", bytes.NewReader(b), &out)
}

// RolloutStatus is the cluster-wide progress of the current rollout.
func (c *Client) RolloutStatus(ctx context.Context) (upgrade.Status, error) {
	var out upgrade.Status
	return out, c.do(ctx, http.MethodGet, "/v1/rollout/status", &out)
}

// Control pauses, resumes or aborts the current rollout; it returns the plan ID.
func (c *Client) Control(ctx context.Context, action string) (string, error) {
	var out map[string]string
	err := c.do(ctx, http.MethodPost, "/v1/rollout/control/"+action, &out)
	return out["plan_id"], err
}
