package main

import (
	"fmt"

	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/urfave/cli/v2"
)

func mkpatchCommand() *cli.Command {
	return &cli.Command{
		Name:      "mkpatch",
		Usage:     "make a bsdiff patch that turns the OLD binary into the NEW one",
		ArgsUsage: "OLD NEW OUT",
		Description: "Give the patch to 'peerd upgrade --patch OUT --patch-from OLD_VERSION': nodes running\n" +
			"OLD_VERSION download the patch instead of the whole binary and check that the result\n" +
			"hashes to the full artifact's sha256; other nodes fetch the full artifact.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 3 {
				return usagef("mkpatch takes OLD NEW OUT, got %d arguments", c.NArg())
			}
			if err := artifact.MakePatch(c.Args().Get(0), c.Args().Get(1), c.Args().Get(2)); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "wrote %s\n", c.Args().Get(2))
			return nil
		},
	}
}
