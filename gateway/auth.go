package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/config"
)

// unauthorized is the error type of a 401 answer. api lists the types of
// the MQTT contract, where a bad login is refused at CONNECT and never
// answered in-band, so it has none for this; the gateway names it here.
const unauthorized api.ErrorType = "unauthorized"

// challenge is the WWW-Authenticate header of a 401: the gateway takes HTTP
// Basic (a user's username and password) or a Bearer API key.
const challenge = `Basic realm="mqttinfer", Bearer`

// Why an Authorization header was refused before any credential was checked.
var (
	errBadBasic  = errors.New("malformed Basic credentials")
	errBadScheme = errors.New("unsupported Authorization scheme")
)

// userKey is the context key of the user a request logged in as.
type userKey struct{}

// userOf returns the user request r logged in as; false with auth off.
func userOf(r *http.Request) (config.Credential, bool) {
	c, ok := r.Context().Value(userKey{}).(config.Credential)
	return c, ok
}

// authorize puts h behind the login check when auth is on: a request
// without a valid login of a user of the credentials file is answered 401
// with a challenge, one of a user whose role is not among roles (nil: any
// role) 403; h finds the user with userOf. Refusals are logged at INFO,
// rate-limited.
func (g *gateway) authorize(h http.Handler, roles ...config.Role) http.Handler {
	if g.auth == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, attempted, err := g.login(r)
		if err != nil {
			remote := r.RemoteAddr
			if a, ok := clientAddr(r, g.trustProxy); ok {
				remote = a.String()
			}
			g.logins.Refused("http login refused", "username", attempted, "remote", remote, "method", r.Method, "path", r.URL.Path, "reason", err.Error())
			g.metrics.Rejected(string(unauthorized))
			w.Header().Set("WWW-Authenticate", challenge)
			writeJSON(w, http.StatusUnauthorized, api.Result{Model: r.PathValue("model"), Status: http.StatusUnauthorized, Error: &api.Error{
				Type:    unauthorized,
				Message: "log in as a user of the credentials file: HTTP Basic with its username and password, or Authorization: Bearer <API key> (mqttinfer passwd --api-key)",
			}})
			return
		}
		if roles != nil && !slices.Contains(roles, c.Role) {
			g.metrics.Rejected(string(api.Forbidden))
			e := api.Errorf(api.Forbidden, "user %q has the %s role: %s", c.Username, c.Role, forbiddenHint(roles))
			writeJSON(w, http.StatusForbidden, api.ErrorResult("", r.PathValue("model"), e))
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, c)))
	})
}

// forbiddenHint says which roles may use a route.
func forbiddenHint(roles []config.Role) string {
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r) + "s"
	}
	return fmt.Sprintf("this is for %s only", strings.Join(names, " and "))
}

// login returns the user the request's Authorization header logs in as,
// and the username it tried (for the log, "" when none could be read).
func (g *gateway) login(r *http.Request) (c config.Credential, attempted string, err error) {
	auth := strings.TrimSpace(r.Header.Get("Authorization"))
	if auth == "" {
		return c, "", config.ErrNoCredentials
	}
	scheme, rest, _ := strings.Cut(auth, " ")
	switch {
	case strings.EqualFold(scheme, "Basic"):
		user, pass, ok := r.BasicAuth()
		if !ok {
			return c, "", errBadBasic
		}
		c, err = g.auth.Password(user, []byte(pass))
		return c, user, err
	case strings.EqualFold(scheme, "Bearer"):
		key := strings.TrimSpace(rest)
		user, _, _ := config.ParseAPIKey(key)
		c, err = g.auth.APIKey(key)
		return c, user, err
	}
	return c, "", errBadScheme
}
