// Package dashboard owns the live dashboard the gateway serves at /: static
// files embedded in the binary (no build step), which draw the fleet view
// the page reads from the gateway's /fleet/events (Server-Sent Events).
//
// The page holds no data of its own. With auth on it asks for a login (an
// observer's, or a worker's) and sends it with every call; without one, or
// with a device's, the gateway answers 401 or 403 and the page shows the
// login again, never the fleet.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// static is the page's files at their paths under /.
var static, _ = fs.Sub(files, "static")

// Register serves the page on mux: GET / and the files it loads (single
// path segments, which no API route uses).
func Register(mux *http.ServeMux) {
	fsrv := http.FileServerFS(static)
	page := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
		fsrv.ServeHTTP(w, r)
	}
	mux.HandleFunc("GET /{$}", page)
	mux.HandleFunc("GET /dashboard.js", page)
	mux.HandleFunc("GET /dashboard.css", page)
}
