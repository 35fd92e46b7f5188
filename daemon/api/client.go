package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"
)

// Client calls an agent's control API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
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
			Timeout: 30 * time.Second,
		},
	}
}

// Members lists the members the agent knows; status filters by status when not empty.
func (c *Client) Members(ctx context.Context, status string) ([]Member, error) {
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	var out []Member
	return out, c.do(ctx, http.MethodGet, "/v1/members?"+q.Encode(), &out)
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

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://peerd"+path, nil)
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read agent answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode agent answer: %w", err)
	}
	return nil
}
