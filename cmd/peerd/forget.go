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
		Description: "Each agent pins the identity key it first saw for every member (DATA_DIR/pins.json), and\n" +
			"refuses that name with any other key: the log says 'comes with identity key ..., not the\n" +
			"key ... this node pinned'. A node whose data dir was lost makes a new key on its next start.\n" +
			"Once you are sure the newcomer is that node, run this on every other agent to let it back in;\n" +
			"its next key is pinned on sight. A name with no key pinned is left as it was (exit 0).\n\n" +
			"Example:\n" +
			"  peerd forget n3",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("forget takes one NODE (its name in 'peerd members'), got %d arguments", c.NArg())
			}
			res, err := newClient(c).Forget(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, res)
			}
			if !res.Forgotten {
				fmt.Fprintf(c.App.Writer, "no identity key was pinned for %q: nothing to forget (the names are in 'peerd members')\n", res.Node)
				return nil
			}
			fmt.Fprintf(c.App.Writer, "forgot the identity key of %s (%.12s…): its next one will be pinned on sight\n", res.Node, res.Key)
			return nil
		},
	}
}
