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
		Flags:       clientFlags(),
		Action: func(c *cli.Context) error {
			if err := newClient(c).Leave(c.Context); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, map[string]bool{"left": true})
			}
			fmt.Fprintln(c.App.Writer, "left the cluster; the agent is exiting")
			return nil
		},
	}
}
