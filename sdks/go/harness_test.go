package aforo_test

// The SDK's tests run against a real Aforo (`aforo serve` + the metering flow), a fault proxy in
// front of it and an LLM stand-in, started by Aforo's own suite (tests/test_sdks.py, `make
// test`), which passes their addresses in AFORO_TEST_*.

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

type harness struct {
	endpoint, key, aiKey, proxy string
}

func env(t *testing.T, name string) string {
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run these tests through Aforo's suite (`make test`, or "+
			"`pytest tests/test_sdks.py -k go` from the repository root)", name)
	}
	return v
}

func newHarness(t *testing.T) *harness {
	return &harness{env(t, "AFORO_TEST_ENDPOINT"), env(t, "AFORO_TEST_API_KEY"),
		env(t, "AFORO_TEST_AI_API_KEY"), env(t, "AFORO_TEST_PROXY")}
}

var quiet = log.New(io.Discard, "", 0)

// newSource: each test its own event source, so the proxy log and the ledger tell its events apart.
func newSource() string {
	b := make([]byte, 5)
	rand.Read(b)
	return fmt.Sprintf("sdk/go-test/%x", b)
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

type proxied struct {
	T      float64          `json:"t"`
	Fault  string           `json:"fault"`
	SDK    string           `json:"sdk"`
	Events []map[string]any `json:"events"`
}

func (h *harness) faults(t *testing.T, retryAfter string, faults ...string) {
	doc, _ := json.Marshal(map[string]any{"faults": faults, "retry_after": retryAfter})
	r, err := http.Post(h.proxy+"/_faults", "application/json", bytes.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
}

// requests: every attempt that reached the proxy carrying source's events.
func (h *harness) requests(t *testing.T, source string) []proxied {
	r, err := http.Get(h.proxy + "/_log")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var all, mine []proxied
	if err := json.NewDecoder(r.Body).Decode(&all); err != nil {
		t.Fatal(err)
	}
	for _, p := range all {
		for _, e := range p.Events {
			if e["source"] == source {
				mine = append(mine, p)
				break
			}
		}
	}
	return mine
}

// sent: source's events as the proxy saw them, first copy of each id, in order.
func (h *harness) sent(t *testing.T, source string) []map[string]any {
	seen := map[any]bool{}
	var events []map[string]any
	for _, p := range h.requests(t, source) {
		for _, e := range p.Events {
			if e["source"] == source && !seen[e["id"]] {
				seen[e["id"]] = true
				events = append(events, e)
			}
		}
	}
	return events
}

func (h *harness) waitSent(t *testing.T, source string, n int) []map[string]any {
	deadline := time.Now().Add(30 * time.Second)
	events := h.sent(t, source)
	for len(events) < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		events = h.sent(t, source)
	}
	return events
}

type record struct {
	Status  string  `json:"status"`
	Tier    string  `json:"tier"`
	Revenue *string `json:"revenue"`
	Cost    *string `json:"cost"`
}

type ledgerEvent struct {
	Status  string   `json:"status"`
	Records []record `json:"records"`
}

// ledger: the event's status and records from Aforo's ledger (GET /v1/events/...), once it has
// at least n records (a retry's duplicate is processed after the original).
func (h *harness) ledger(t *testing.T, key, source, id string, n int) ledgerEvent {
	parts := strings.Split(source, "/")
	for i := range parts {
		parts[i] = url.PathEscape(parts[i])
	}
	u := h.endpoint + "/v1/events/" + strings.Join(parts, "/") + "/" + url.PathEscape(id)
	deadline := time.Now().Add(90 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		var e ledgerEvent
		if r.StatusCode == 200 && json.Unmarshal(body, &e) == nil && len(e.Records) >= n {
			return e
		}
		if (r.StatusCode != 200 && r.StatusCode != 404) || time.Now().After(deadline) {
			t.Fatalf("%s: %d %s", u, r.StatusCode, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (h *harness) allAccepted(t *testing.T, key, source string, ids []string) {
	for _, id := range ids {
		if e := h.ledger(t, key, source, id, 1); e.Status != "accepted" {
			t.Fatalf("%s: %+v", id, e)
		}
	}
}

// money: an exact decimal string without trailing zeros ("0.0060000" -> "0.006"); "" for null.
func money(s *string) string {
	if s == nil {
		return ""
	}
	v := *s
	if strings.Contains(v, ".") {
		v = strings.TrimRight(strings.TrimRight(v, "0"), ".")
	}
	return v
}
