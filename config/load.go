package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Load builds the effective configuration from, in rising precedence:
//
//  1. the defaults (Default);
//  2. a YAML file: the --config flag's path, else $MQTTINFER_CONFIG, else
//     ./mqttinfer.yaml if it exists. A path given by the flag or the
//     environment that does not exist is an error. Unknown keys are an error
//     naming the key;
//  3. MQTTINFER_* environment variables, one per key (MQTTINFER_MQTT_TCP_ADDR,
//     MQTTINFER_THROTTLE_RATE); an empty value counts (MQTTINFER_MQTT_WS_ADDR=
//     disables the listener). Maps and lists take YAML flow syntax:
//     MQTTINFER_MODELS_COSTS='{anomaly: 1}';
//  4. the flags of fs registered by BindFlags (for any command) that were set
//     on the command line; other flags of fs are left alone. A flag and its
//     alias both set is an error.
//
// A MQTTINFER_* variable that names no option is an error naming it, like an
// unknown key in the file; the exceptions are listed in REFERENCE.md
// ($MQTTINFER_CONFIG, the variable named by models.chat.api_key_env, and
// MQTTINFER_REQUIRE_TESTDATA).
//
// A remote.password that is Mask ("***", what --print-config prints in its
// place) is an error that says where to put the real one, unless the
// environment or a flag sets the password over the file's mask.
//
// fs may be nil. Durations are strings with a unit ("5s", "10m"); a bare
// number for a duration is an error. Keys are case-insensitive and read in
// lower case, model names in costs maps included.
//
// Load does not validate: call Validate with the names of the known models.
func Load(fs *pflag.FlagSet) (Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	v.AllowEmptyEnv(true)

	def := defaultsFor(commandOf(fs))
	for _, l := range leaves() {
		if f := field(&def, l.key); !isNilish(f) {
			v.SetDefault(l.key, f.Interface())
		}
		if err := v.BindEnv(l.key, envName(l.key)); err != nil {
			return Config{}, fmt.Errorf("bind environment for %s: %w", l.key, err)
		}
	}

	path, err := configPath(fs)
	if err != nil {
		return Config{}, err
	}
	if path != "" {
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return Config{}, fmt.Errorf("read config file %s: %w", path, err)
		}
		if err := checkKeys(v.AllKeys()); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}

	if err := setFlags(v, fs); err != nil {
		return Config{}, err
	}
	envErr := checkEnv(os.Environ(), v.GetString("models.chat.api_key_env"))

	var c Config
	err = v.UnmarshalExact(&c, func(dc *mapstructure.DecoderConfig) {
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			rejectBareDuration,
			parseScalars,
			flowCollections,
		)
	})
	if err != nil {
		return Config{}, errors.Join(envErr, decodeErrors(err, func(key string) string { return source(key, path, fs) }))
	}
	if envErr != nil {
		return Config{}, envErr
	}
	if err := checkMask(c, func(key string) string { return source(key, path, fs) }); err != nil {
		return Config{}, err
	}
	c.resolve()
	return c, nil
}

// setFlags sets in v the keys of the flags of fs that were set.
func setFlags(v *viper.Viper, fs *pflag.FlagSet) error {
	if fs == nil {
		return nil
	}
	byKey := map[string][]*pflag.Flag{}
	var keys []string
	fs.Visit(func(f *pflag.Flag) {
		if key := flagKey(f); key != "" {
			if byKey[key] == nil {
				keys = append(keys, key)
			}
			byKey[key] = append(byKey[key], f)
		}
	})
	var errs []error
	for _, key := range keys {
		if fl := byKey[key]; len(fl) > 1 {
			errs = append(errs, fmt.Errorf("--%s and --%s both set %s: give only one of them", fl[0].Name, fl[1].Name, key))
			continue
		}
		v.Set(key, byKey[key][0].Value.String())
	}
	return errors.Join(errs...)
}

// checkEnv reports every variable of environ (NAME=value) whose name starts
// with MQTTINFER_ but is neither an option's nor one of otherEnv, with a
// suggestion when a name is close. apiKeyEnv is the effective
// models.chat.api_key_env.
func checkEnv(environ []string, apiKeyEnv string) error {
	// Names are compared without the common MQTTINFER_, which would make
	// any two look alike.
	known := map[string]bool{}
	var names []candidate
	for _, l := range leaves() {
		names = append(names, candidate{strings.TrimPrefix(envName(l.key), EnvPrefix+"_"), strings.ToUpper(l.key[strings.LastIndex(l.key, ".")+1:])})
	}
	for _, e := range otherEnv(apiKeyEnv) {
		known[e.name] = true
		if tail, ok := strings.CutPrefix(e.name, EnvPrefix+"_"); ok {
			names = append(names, candidate{tail, tail})
		}
	}
	for _, n := range names {
		known[EnvPrefix+"_"+n.full] = true
	}
	defaultKeyEnv := defaults().Models.Chat.APIKeyEnv
	var errs []error
	for _, kv := range slices.Sorted(slices.Values(environ)) {
		v, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(v, EnvPrefix+"_") || known[v] {
			continue
		}
		msg := fmt.Sprintf("unknown variable %q", v)
		if v == defaultKeyEnv {
			msg += fmt.Sprintf(" (models.chat.api_key_env is %q: the chat key is read from that variable instead)", apiKeyEnv)
		} else if s := suggest(strings.TrimPrefix(v, EnvPrefix+"_"), "_", names); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", EnvPrefix+"_"+s)
		}
		errs = append(errs, errors.New(msg))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("environment: %w", err)
	}
	return nil
}

// decodeErrors rewrites mapstructure's errors as "key (from source): problem",
// one per bad key.
func decodeErrors(err error, from func(key string) string) error {
	var errs []error
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		var de *mapstructure.DecodeError
		if errors.As(e, &de) {
			errs = append(errs, fmt.Errorf("%s (from %s): %w", de.Name(), from(de.Name()), de.Unwrap()))
			return
		}
		if u := errors.Unwrap(e); u != nil && strings.HasPrefix(e.Error(), "decoding failed") {
			walk(u)
			return
		}
		errs = append(errs, e)
	}
	walk(err)
	return fmt.Errorf("config: %w", errors.Join(errs...))
}

// source says where the value of key (or of the option a key like
// "throttle.overrides[0]" lies in) came from, by precedence.
func source(key, path string, fs *pflag.FlagSet) string {
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	from := ""
	if fs != nil {
		fs.Visit(func(f *pflag.Flag) {
			if flagKey(f) == key {
				from = "--" + f.Name
			}
		})
	}
	if from != "" {
		return from
	}
	if _, ok := os.LookupEnv(envName(key)); ok {
		return envName(key)
	}
	if path != "" {
		return "file " + path
	}
	return "defaults"
}

// configPath finds the config file to read, or "" for none.
func configPath(fs *pflag.FlagSet) (string, error) {
	explicit, from := "", ""
	if fs != nil {
		if f := fs.Lookup(FlagConfig); f != nil && f.Value.String() != "" {
			explicit, from = f.Value.String(), "--"+FlagConfig
		}
	}
	if explicit == "" {
		if p := os.Getenv(EnvConfigFile); p != "" {
			explicit, from = p, EnvConfigFile
		}
	}
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("config file %s (from %s): %w", explicit, from, err)
		}
		return explicit, nil
	}
	if _, err := os.Stat(DefaultFile); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("config file %s: %w", DefaultFile, err)
	}
	return DefaultFile, nil
}

// checkKeys reports every key of keys that is not an option, with a
// suggestion when one is close.
func checkKeys(keys []string) error {
	known := map[string]bool{}
	var names []candidate
	for _, l := range leaves() {
		known[l.key] = true
		names = append(names, candidate{l.key, l.key[strings.LastIndex(l.key, ".")+1:]})
	}
	secs := sections()
	slices.Sort(keys)
	var errs []error
	for _, k := range keys {
		if known[k] || strings.HasPrefix(k, "models.costs.") {
			continue
		}
		switch {
		case secs[k]:
			errs = append(errs, fmt.Errorf("%q must be a mapping of options, not a single value", k))
		default:
			msg := fmt.Sprintf("unknown key %q", k)
			if s := suggest(k, ".", names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			errs = append(errs, errors.New(msg))
		}
	}
	return errors.Join(errs...)
}

// candidate is a known name and its last part: the key "throttle.burst" and
// "burst", or the variable "MQTTINFER_THROTTLE_BURST" and "BURST".
type candidate struct{ full, last string }

// suggest returns the known name closest to k: one with the same last part
// (after sep), or within a small edit distance (at most a third of k, so
// that a short name is not matched to an unrelated one).
func suggest(k, sep string, known []candidate) string {
	best, bestD := "", 4
	for _, n := range known {
		d := editDistance(k, n.full)
		if strings.HasSuffix(sep+k, sep+n.last) {
			d = min(d, 2)
		}
		if d < bestD && d <= max(1, len(k)/3) {
			best, bestD = n.full, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func isNilish(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Map, reflect.Slice:
		return v.IsNil()
	}
	return false
}

// rejectBareDuration refuses numbers for durations: mapstructure would read
// 3600 as 3600 nanoseconds.
func rejectBareDuration(from, to reflect.Type, data any) (any, error) {
	if to != durationType || from == durationType {
		return data, nil
	}
	switch from.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return nil, fmt.Errorf("duration %v has no unit: write it with one, like \"%vs\" or \"%vm\"", data, data, data)
	}
	return data, nil
}

// parseScalars parses strings (from the environment, flags, or quoted in
// the file) into durations, numbers and booleans, with errors that show the
// bad value.
func parseScalars(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String {
		return data, nil
	}
	s := strings.TrimSpace(data.(string))
	switch {
	case to == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration like \"5s\" or \"10m\"", s)
		}
		return d, nil
	case to.Kind() == reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a whole number", s)
		}
		return n, nil
	case to.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", s)
		}
		return f, nil
	case to.Kind() == reflect.Bool:
		if s == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not true or false", s)
		}
		return b, nil
	}
	return data, nil
}

// flowCollections reads a string given for a map or a list (from the
// environment) as YAML flow syntax: {anomaly: 1} or [{pattern: cam-*, rate: 1}].
func flowCollections(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || (to.Kind() != reflect.Map && to.Kind() != reflect.Slice) {
		return data, nil
	}
	var out any
	if err := yaml.Unmarshal([]byte(data.(string)), &out); err != nil {
		return nil, fmt.Errorf("%q is not YAML flow syntax like {anomaly: 1} or [{pattern: cam-*}]: %w", data, err)
	}
	if out == nil {
		return reflect.Zero(to).Interface(), nil
	}
	return out, nil
}
