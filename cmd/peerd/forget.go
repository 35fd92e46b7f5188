package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func forgetCommand() *cli.Command {
	return &cli.Command{
		Name:      "forget",
		Usage:     "unpin a member's identity key, so that it may come back with a new one",
		ArgsUsage: "NODE",
		Description: "Each agent pins the identity key it first saw for every member, and refuses that name\n" +
			"with any other key. A node whose data dir was lost makes a new key on its next start;\n" +
			"run this on the other agents (after making sure it is that node) to let it back in.",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("forget takes one NODE, got %d arguments", c.NArg())
			}
			node := c.Args().First()
			if err := newClient(c).Forget(c.Context, node); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, map[string]string{"forgot": node})
			}
			fmt.Fprintf(c.App.Writer, "forgot the identity key of %s: its next one will be pinned on sight\n", node)
			return nil
		},
	}
}
