package aforo

import (
	"context"
	"net/http"
	"time"
)

// DefaultSkipPaths are probes and scrapes, not usage.
var DefaultSkipPaths = []string{"/health", "/healthz", "/livez", "/readyz", "/ready", "/ping", "/metrics",
	"/favicon.ico"}

// MiddlewareOptions configure Middleware; zero values take the defaults shown.
type MiddlewareOptions struct {
	EventType      string                     // "api.call"
	CustomerHeader string                     // "X-Customer-Id"
	Customer       func(*http.Request) string // overrides what a handler set and the header
	// Route gives the route template; by default the pattern an http.ServeMux matched.
	Route          func(*http.Request) string
	SkipPaths      []string // DefaultSkipPaths when nil ([]string{} skips nothing)
	Skip           func(*http.Request) bool
	MeterUnmatched bool // meter requests no route matched (route "")
}

// Middleware meters every request next serves as an `api.call` event: route template, method,
// status, latency_ms. The customer is the Customer callback's answer, else what the handler set
// with SetCustomer(r.Context(), ...), else the customer header. Everything metered inside the
// request with r.Context() is attributed to that customer too.
func (c *Client) Middleware(next http.Handler, opts MiddlewareOptions) http.Handler {
	if opts.EventType == "" {
		opts.EventType = "api.call"
	}
	if opts.CustomerHeader == "" {
		opts.CustomerHeader = "X-Customer-Id"
	}
	if opts.SkipPaths == nil {
		opts.SkipPaths = DefaultSkipPaths
	}
	skipped := map[string]bool{}
	for _, p := range opts.SkipPaths {
		skipped[p] = true
	}
	mux, _ := next.(*http.ServeMux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if skipped[r.URL.Path] || (opts.Skip != nil && opts.Skip(r)) {
			next.ServeHTTP(w, r)
			return
		}
		started := time.Now()
		scope := &Scope{Customer: r.Header.Get(opts.CustomerHeader)}
		if outer := scopeOf(r.Context()); outer != nil {
			scope.Agent = outer.Agent
			if scope.Customer == "" {
				scope.Customer = outer.Customer
			}
		}
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		r = r.WithContext(context.WithValue(r.Context(), scopeKey{}, scope))
		defer func() {
			if p := recover(); p != nil {
				rec.status = http.StatusInternalServerError
				c.finish(r, scope, rec.status, started, opts, mux)
				panic(p)
			}
			c.finish(r, scope, rec.status, started, opts, mux)
		}()
		next.ServeHTTP(rec, r)
	})
}

func (c *Client) finish(r *http.Request, scope *Scope, status int, started time.Time, opts MiddlewareOptions,
	mux *http.ServeMux) {
	route := scope.Route
	if route == "" && opts.Route != nil {
		route = opts.Route(r)
	}
	if route == "" && mux != nil {
		if _, pattern := mux.Handler(r); pattern != "" {
			route = pattern
		}
	}
	if route == "" && !opts.MeterUnmatched {
		return // no route matched: nobody's usage
	}
	customer := scope.Customer
	if opts.Customer != nil {
		if who := opts.Customer(r); who != "" {
			customer = who
		}
	}
	latency := float64(time.Since(started).Microseconds()) / 1000
	c.meterQuietly(r.Context(), opts.EventType, customer, Data{"route": route, "method": r.Method,
		"status": status, "latency_ms": latency}, r.Method+" "+route)
}

// recorder remembers the status a handler wrote.
type recorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (r *recorder) WriteHeader(status int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = status, true
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	return r.ResponseWriter.Write(b)
}

// Flush passes streaming through.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the server's writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
