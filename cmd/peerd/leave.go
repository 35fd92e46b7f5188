package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func leaveCommand() *cli.Command {
	return &cli.Command{
		Name:        "leave",
		Usage:       "make the local agent leave the cluster gracefully and exit",
		Description: "The other members then show this node as 'left' rather than 'failed'.",
		Flags:       clientFlags()[:1],
		Action: func(c *cli.Context) error {
			if err := newClient(c).Leave(c.Context); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, "left the cluster; the agent is exiting")
			return nil
		},
	}
}
