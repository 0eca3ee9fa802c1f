package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// reference renders REFERENCE.md from the option table; a test keeps the
// file in step (go test ./config -run TestReference -update rewrites it).
func reference() string {
	var b strings.Builder
	b.WriteString(`# mqttinfer configuration reference

<!-- Generated from config/options.go by "go test ./config -run TestReference -update". Do not edit. -->

Every option has a key in the YAML file, an environment variable, and for the
most used ones a command-line flag. Later sources override earlier ones:

1. built-in defaults;
2. the YAML file: ` + "`--config PATH`" + `, else ` + "`$" + EnvConfigFile + "`" + `, else ` + "`./" + DefaultFile + "`" + ` if it
   exists (a path given by the flag or the variable must exist);
3. ` + "`" + EnvPrefix + "_*`" + ` environment variables (nested keys joined with ` + "`_`" + `);
4. flags given on the command line (a flag's default never overrides 2 or 3).

Unknown keys in the file are an error. Durations are written with a unit
(` + "`500ms`, `5s`, `10m`, `1h`" + `); a bare number is an error. An empty environment
variable counts: ` + "`MQTTINFER_MQTT_WS_ADDR=`" + ` disables the WebSocket listener.
Maps and lists in the environment take YAML flow syntax:
` + "`MQTTINFER_MODELS_COSTS='{anomaly: 1}'`" + `,
` + "`MQTTINFER_THROTTLE_OVERRIDES='[{pattern: cam-*, rate: 1}]'`" + `.
Keys are case-insensitive and read in lower case, model names in ` + "`costs`" + ` included.
A ` + "`" + EnvPrefix + "_*`" + ` variable that names no option is an error too, except those
listed under [Other environment variables](#other-environment-variables).

Each command has flags only for the options it uses, so a flag that would do
nothing there is an error (` + "`unknown flag`" + `). The Flag column says which
commands have it: ` + "`serve`" + `, ` + "`worker`" + `, and ` + "`clients`" + `, the client commands
` + "`sim`, `watch`, `models` and `chat`" + ` (their other flags, such as ` + "`--devices`" + `, are
not options). One flag name can set different keys on different commands:
` + "`--throttle`" + ` is ` + "`throttle.enabled`" + ` on ` + "`serve`" + ` and ` + "`remote.throttle`" + ` on ` + "`worker`" + `;
` + "`--concurrency`" + ` and ` + "`--http-addr`" + ` likewise. A second name after a comma is an
alias, kept for scripts. Every one of these commands also has ` + "`--config`" + `.

` + "`mqttinfer serve --print-config`" + ` prints the effective configuration in the
file's format. ` + "`config/mqttinfer.example.yaml`" + ` is a commented example.

| Key | Environment | Flag | Default | Meaning |
| --- | --- | --- | --- | --- |
`)
	d := defaults()
	for _, o := range options {
		fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s | %s |\n", o.key, envName(o.key), flagText(o),
			cell(defaultText(o, field(&d, o.key))), cell(o.doc))
	}
	b.WriteString(`
## Other environment variables

Besides the options' own, these ` + "`" + EnvPrefix + "_*`" + ` variables are not reported as unknown:

| Variable | Meaning |
| --- | --- |
`)
	for _, e := range otherEnv(d.Models.Chat.APIKeyEnv) {
		fmt.Fprintf(&b, "| `%s` | %s |\n", e.name, cell(e.doc))
	}
	b.WriteString(`
## Credentials file

With ` + "`auth.enabled: true`" + `, every MQTT client and every HTTP request (but ` + "`/healthz`" + ` and
` + "`/readyz`" + `) logs in as a user of ` + "`auth.credentials_file`" + `. ` + "`mqttinfer passwd`" + ` writes it:

` + "```sh" + `
printf '%s\n' "$PASSWORD" | mqttinfer passwd --credentials creds.yaml --role device thermo-1
mqttinfer passwd --credentials creds.yaml --api-key thermo-1   # prints a new HTTP API key once
mqttinfer passwd --credentials creds.yaml --delete thermo-1
mqttinfer passwd --credentials creds.yaml --hash-plaintext     # hash every plain-text password
` + "```" + `

` + "```yaml" + `
users:
  - username: thermo-1
    password_hash: $2a$10$...          # bcrypt
    role: device
    api_keys:
      - $2a$10$...                      # mqi_thermo-1_1a2b…, 2025-06-01
  - {username: ops, password_hash: "$2a$10$...", role: observer}
  - {username: w1, password_hash: "$2a$10$...", role: worker}
` + "```" + `

- ` + "`device`" + `: publishes requests under its own id (the username is the device id) and
  reads its own results, the model catalog and status; over HTTP it runs inference
  requests as itself and reads the catalog;
- ` + "`observer`" + `: reads every result, the catalog and status, publishes nothing; over HTTP
  it reads the catalog and ` + "`/metrics`" + `;
- ` + "`worker`" + `: takes requests and publishes results (a remote ` + "`mqttinfer worker`" + `); over
  HTTP it reads the catalog and ` + "`/metrics`" + `.

Usernames are 1–64 bytes of ` + "`[A-Za-z0-9._-]`" + ` and unique. ` + "`password_hash`" + ` and each of
` + "`api_keys`" + ` are bcrypt hashes; a user with neither logs in only with a client
certificate that names it (` + "`tls.client_ca_file`" + `). An API key
(` + "`mqi_<username>_<64 hex digits>`" + `, sent as ` + "`Authorization: Bearer <key>`" + `) is shown once
by ` + "`mqttinfer passwd --api-key`" + `; the file keeps only its hash, and deleting its line
revokes it. A plain-text ` + "`password:`" + ` is refused unless the file says
` + "`insecure_plaintext: true`" + ` at the top level (development only; the service then logs
a warning). The service reads the file at start: restart it after a change.
`)
	return b.String()
}

// flagText is an option's Flag cell: "`--throttle`, `--worker-throttle` (worker)".
func flagText(o option) string {
	if o.flag == "" {
		return ""
	}
	s := "`--" + o.flag + "`"
	if o.alias != "" {
		s += ", `--" + o.alias + "`"
	}
	return s + " (" + o.on.String() + ")"
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// defaultText shows an option's default with its unit.
func defaultText(o option, v reflect.Value) string {
	if o.def != "" {
		return o.def
	}
	var s string
	switch {
	case v.Type() == durationType:
		s = "`" + shortDuration(v.Interface().(time.Duration)) + "`"
	case v.Kind() == reflect.String:
		s = fmt.Sprintf("`%q`", v.String())
		if v.String() == "" {
			return "empty"
		}
	default:
		s = fmt.Sprintf("`%v`", v.Interface())
	}
	switch o.unit {
	case "", "duration", "path", "URL":
	case "bytes":
		s += " bytes"
		if n := v.Int(); n >= 1024 && n%1024 == 0 {
			s += fmt.Sprintf(" (%d KiB)", n/1024)
		}
	default:
		s += " " + o.unit
	}
	return s
}

// shortDuration writes 1h0m0s as 1h and 10m0s as 10m.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
