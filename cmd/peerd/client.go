package main

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/peerd/peerd/daemon/api"
	"github.com/urfave/cli/v2"
)

// defaultDataDir is where packaged agents keep their data, and so where
// clients look for the socket when told nothing else.
const defaultDataDir = "/var/lib/peerd"

// clientFlags are the flags every command that talks to the agent takes.
func clientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    "socket",
			Usage:   "the agent's control socket `FILE` (default: DATA_DIR/peerd.sock, with PEERD_DATA_DIR or " + defaultDataDir + ")",
			EnvVars: []string{"PEERD_SOCKET"},
		},
		&cli.BoolFlag{Name: "json", Usage: "print the result as one JSON document"},
	}
}

func newClient(c *cli.Context) *api.Client {
	cl := api.NewClient(socketPath(c))
	if app := c.String("app"); app != "" {
		cl = cl.ForTarget(app)
	}
	return cl
}

// appFlag makes a rollout command act on a managed application's rollouts.
func appFlag() cli.Flag {
	return &cli.StringFlag{Name: "app", Usage: "the rollouts of the managed application `NAME`, not peerd's (also: peerd upgrade NAME ...)"}
}

func socketPath(c *cli.Context) string {
	if s := c.String("socket"); s != "" {
		return s
	}
	dir := os.Getenv("PEERD_DATA_DIR")
	if dir == "" {
		dir = defaultDataDir
	}
	return filepath.Join(dir, "peerd.sock")
}

func printJSON(c *cli.Context, v any) error {
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
