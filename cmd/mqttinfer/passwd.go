package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mqttinfer/mqttinfer/config"
)

func passwdCmd() *cobra.Command {
	var (
		file                     string
		role                     string
		cost                     int
		apiKey, del, hashAllText bool
	)
	cmd := &cobra.Command{
		Use:   "passwd --credentials FILE [--role ROLE | --api-key | --delete] USERNAME",
		Short: "Add or change a user of the credentials file (bcrypt hashes)",
		Long: `Manage the credentials file of --auth, like mosquitto_passwd:

  mqttinfer passwd --credentials creds.yaml --role device thermo-1
      set thermo-1's password, read from standard input (one line), as a
      bcrypt hash; a new user needs --role (device, observer, worker), an
      existing one keeps its role unless --role is given. The file is
      created (mode 0600) when missing; other users, their order and the
      comments are kept.
  mqttinfer passwd --credentials creds.yaml --api-key thermo-1
      make a new HTTP API key for thermo-1 (Authorization: Bearer <key>),
      print it once on standard output and store only its hash. To revoke
      a key, delete its line (its comment shows the key's first characters).
  mqttinfer passwd --credentials creds.yaml --delete thermo-1
  mqttinfer passwd --credentials creds.yaml --hash-plaintext
      replace every plain-text "password:" with its hash.

A running service reads the file at start: restart it to apply changes.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if hashAllText {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			switch {
			case hashAllText:
				users, err := config.HashPlaintext(file, cost)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "hashed the passwords of %d users in %s\n", len(users), file)
				return nil
			case apiKey:
				key, err := config.AddAPIKey(file, args[0], cost)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "new API key of %s (shown once; the file keeps only its hash):\n", args[0])
				fmt.Fprintln(out, key)
				return nil
			case del:
				if err := config.DeleteUser(file, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(out, "deleted %s from %s\n", args[0], file)
				return nil
			}
			password, err := readPassword(cmd.InOrStdin(), cmd.ErrOrStderr(), args[0])
			if err != nil {
				return err
			}
			added, err := config.SetPassword(file, args[0], config.Role(role), password, cost)
			if err != nil {
				return err
			}
			verb := "updated"
			if added {
				verb = "added"
			}
			fmt.Fprintf(out, "%s %s in %s\n", verb, args[0], file)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&file, "credentials", "", "the credentials file (required)")
	fs.StringVar(&role, "role", "", "the user's role: device, observer or worker (required for a new user)")
	fs.BoolVar(&apiKey, "api-key", false, "add a new API key for the user and print it")
	fs.BoolVar(&del, "delete", false, "delete the user")
	fs.BoolVar(&hashAllText, "hash-plaintext", false, "hash every plain-text password of the file")
	fs.IntVar(&cost, "cost", config.DefaultCost, "bcrypt cost of the new hashes, 4 to 31: each step doubles the time of a login check (lower only for tests)")
	_ = cmd.MarkFlagRequired("credentials")
	cmd.MarkFlagsMutuallyExclusive("role", "api-key", "delete", "hash-plaintext")
	return cmd
}

// readPassword reads a password, one line, from in; on a terminal it asks
// for it first. The line's end is not part of it. (It is echoed: the
// module has no terminal package to turn echo off.)
func readPassword(in io.Reader, prompt io.Writer, user string) ([]byte, error) {
	if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprintf(prompt, "password for %s: ", user)
		}
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read the password from standard input: %w", err)
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if line == "" {
		return nil, errors.New("no password on standard input: give it as one line (printf '%s\\n' \"$PASSWORD\" | mqttinfer passwd …)")
	}
	return []byte(line), nil
}
