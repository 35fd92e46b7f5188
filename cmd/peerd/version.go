package main

import (
	"fmt"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/urfave/cli/v2"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print this binary's version, commit, platform and protocol range",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON (keys version, commit, go_version, os, arch, protocol_min, protocol_max)"}},
		Action: func(c *cli.Context) error {
			info, err := buildinfo.Get()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, info)
			}
			fmt.Fprintf(c.App.Writer, "peerd %s (commit %s, %s, %s/%s), protocol %s\n", info.Version, info.Commit, info.GoVersion, info.OS, info.Arch,
				cluster.ProtocolRange{Min: info.ProtocolMin, Max: info.ProtocolMax})
			return nil
		},
	}
}

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "print a new random gossip encryption key",
		Description: "Give the same key to every agent with --encrypt (or PEERD_ENCRYPT, or encrypt in\n" +
			"the config file). Agents with another key, or none, cannot join.",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print {\"key\": KEY} instead of the bare key"}},
		Action: func(c *cli.Context) error {
			k, err := cluster.GenerateKey()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, map[string]string{"key": k})
			}
			fmt.Fprintln(c.App.Writer, k)
			return nil
		},
	}
}
