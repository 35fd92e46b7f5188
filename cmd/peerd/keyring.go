package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"text/tabwriter"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon/api"
	"github.com/urfave/cli/v2"
)

func keyringCommand() *cli.Command {
	op := func(name, usage string) *cli.Command {
		return &cli.Command{
			Name:      name,
			Usage:     usage,
			ArgsUsage: "KEY",
			Flags:     clientFlags(),
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("keyring %s takes one KEY (base64, from 'peerd keygen'), got %d arguments", name, c.NArg())
				}
				if _, err := cluster.ParseKey(c.Args().First()); err != nil {
					return usagef("keyring %s: %v", name, err)
				}
				return keyringRun(c, name, c.Args().First(), func(res api.Keyring) error {
					_, err := fmt.Fprintf(c.App.Writer, "%s: %d of %d members answered, %d failed\n", name, res.Responses, res.Nodes, res.Errors)
					return err
				})
			},
		}
	}
	return &cli.Command{
		Name:  "keyring",
		Usage: "list and rotate the gossip encryption keys of every member",
		Description: "Gossip is encrypted with the keyring's primary key; every installed key can decrypt.\n" +
			"Each change runs on every member (a Serf query) and each member keeps it in its keyring\n" +
			"file, so it survives restarts. To rotate, with KEY from 'peerd keygen':\n\n" +
			"   peerd keyring install KEY   every member can decrypt with the new key\n" +
			"   peerd keyring use KEY       every member encrypts with it\n" +
			"   peerd keyring remove OLD    the old key opens nothing any more\n\n" +
			"Check 'peerd keyring list' between steps: go on only when every member answered.\n" +
			"A member that was down misses the change; it must get the new key (in its keyring file)\n" +
			"before it can rejoin once the old key is removed.",
		Flags:  clientFlags(),
		Action: keyringList,
		Subcommands: []*cli.Command{
			{
				Name:   "list",
				Usage:  "show each key and how many members have it installed and use it as primary",
				Flags:  clientFlags(),
				Action: keyringList,
			},
			op("install", "install KEY on every member, beside the keys they have"),
			op("use", "make the installed KEY every member's primary: gossip is encrypted with it"),
			op("remove", "remove KEY from every member (not the primary: 'use' another first)"),
		},
	}
}

// keyringList prints each key and on how many members it is installed and
// primary; peerd keyring alone does the same.
func keyringList(c *cli.Context) error {
	if c.NArg() > 0 {
		if c.Command.Name == "keyring" {
			return usagef("unknown keyring command %q: want list, install, use or remove", c.Args().First())
		}
		return usagef("keyring list takes no arguments, got %q", c.Args().First())
	}
	return keyringRun(c, "list", "", func(res api.Keyring) error {
		w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "KEY\tINSTALLED\tPRIMARY")
		for _, k := range slices.Sorted(maps.Keys(res.Keys)) {
			fmt.Fprintf(w, "%s\t%d/%d\t%d/%d\n", k, res.Keys[k], res.Nodes, res.Primary[k], res.Nodes)
		}
		return w.Flush()
	})
}

// keyringRun runs op on the agent and prints the members' answers: as
// JSON, or with text and then each failed member; it fails when some
// member failed or did not answer.
func keyringRun(c *cli.Context, op, key string, text func(api.Keyring) error) error {
	res, err := newClient(c).Keyring(c.Context, op, key)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		err = printJSON(c, res)
	} else if err = text(res); err == nil {
		printFailed(c, res)
	}
	if err != nil {
		return err
	}
	if res.Error != "" {
		return errors.New(res.Error)
	}
	return nil
}

// printFailed names the members that failed and why.
func printFailed(c *cli.Context, res api.Keyring) {
	for _, name := range slices.Sorted(maps.Keys(res.Failed)) {
		fmt.Fprintf(c.App.ErrWriter, "  %s: %s\n", name, res.Failed[name])
	}
}
