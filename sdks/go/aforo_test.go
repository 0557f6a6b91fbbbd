package aforo_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"aforo-go"
)

func newClient(t *testing.T, o aforo.Options) *aforo.Client {
	if o.Logger == nil {
		o.Logger = quiet
	}
	c, err := aforo.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sizes(ps []proxied) []int {
	var n []int
	for _, p := range ps {
		n = append(n, len(p.Events))
	}
	return n
}

func TestMeterLandsInTheLedgerAsTierSDKWithItsRevenue(t *testing.T) {
	h, source := newHarness(t), newSource()
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.aiKey, Source: source})
	var ids []string
	for i := 0; i < 3; i++ {
		id, err := c.Meter(context.Background(), "api.call", "ai-cust-1", aforo.Data{"route": "/v1/search"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if !c.Flush(10 * time.Second) {
		t.Fatal("not flushed")
	}
	c.Close(time.Second)
	reqs := h.requests(t, source)
	if !reflect.DeepEqual(sizes(reqs), []int{3}) || reqs[0].SDK != "go/"+aforo.Version {
		t.Fatalf("one batch with the SDK header expected: %+v", reqs)
	}
	for _, id := range ids {
		e := h.ledger(t, h.aiKey, source, id, 1)
		r := e.Records[0]
		// nimbus's plan: api_calls per unit 0.001, cost 0.0002
		if e.Status != "accepted" || r.Tier != "sdk" || money(r.Revenue) != "0.001" || money(r.Cost) != "0.0002" {
			t.Fatalf("%s: %+v", id, e)
		}
	}
}

func TestBatchesCloseOnSizeAndOnLinger(t *testing.T) {
	h, source := newHarness(t), newSource()
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source, BatchSize: 10, Linger: time.Hour})
	for i := 0; i < 25; i++ {
		c.Meter(context.Background(), "api.call", "cust-1", aforo.Data{"i": i})
	}
	h.waitSent(t, source, 20)
	if got := sizes(h.requests(t, source)); !reflect.DeepEqual(got, []int{10, 10}) {
		t.Fatalf("two full batches expected, the 5 lingering: %v", got)
	}
	c.Close(10 * time.Second)
	if got := sizes(h.requests(t, source)); !reflect.DeepEqual(got, []int{10, 10, 5}) {
		t.Fatalf("close sends the rest: %v", got)
	}
	lingering := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source, Linger: 200 * time.Millisecond})
	defer lingering.Close(time.Second)
	lingering.Meter(context.Background(), "api.call", "cust-1", nil)
	if n := len(h.waitSent(t, source, 26)); n != 26 {
		t.Fatalf("the linger alone sends it: %d", n)
	}
}

func TestRetriesHonourRetryAfterAndARetryIsADuplicateNeverASecondCharge(t *testing.T) {
	h, source := newHarness(t), newSource()
	h.faults(t, "1", "503", "429", "drop", "ack_lost")
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.aiKey, Source: source, BackoffBase: 10 * time.Millisecond})
	id, _ := c.Meter(context.Background(), "api.call", "ai-cust-2", nil)
	if !c.Flush(30 * time.Second) {
		t.Fatal("not flushed")
	}
	if s := c.Stats(); s.Retries != 4 || s.Delivered != 1 {
		t.Fatalf("%+v", s)
	}
	c.Close(time.Second)
	attempts := h.requests(t, source)
	var faults []string
	for _, a := range attempts {
		faults = append(faults, a.Fault)
		if a.Events[0]["id"] != id {
			t.Fatalf("every attempt carries the id given at creation: %v", a.Events[0]["id"])
		}
	}
	if !reflect.DeepEqual(faults, []string{"503", "429", "drop", "ack_lost", "pass"}) {
		t.Fatalf("%v", faults)
	}
	if attempts[1].T-attempts[0].T < 0.95 || attempts[2].T-attempts[1].T < 0.95 {
		t.Fatalf("Retry-After: 1 not honoured: %+v", attempts)
	}
	e := h.ledger(t, h.aiKey, source, id, 2)
	got := fmt.Sprint(e.Status, e.Records[0].Status, e.Records[0].Tier, money(e.Records[0].Revenue),
		e.Records[1].Status, e.Records[1].Tier, money(e.Records[1].Revenue))
	if got != "acceptedacceptedsdk0.001duplicatesdk" {
		t.Fatalf("billed once, the retry a duplicate: %+v", e)
	}
}

func TestARefusedEventIsNotRetriedAndARefusedBatchIsSplit(t *testing.T) {
	h, source := newHarness(t), newSource()
	var errs []*aforo.DeliveryError
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source,
		OnError: func(e *aforo.DeliveryError) { errs = append(errs, e) }})
	defer c.Close(time.Second)
	h.faults(t, "1", "400")
	c.Meter(context.Background(), "api.call", "cust-1", nil)
	c.Flush(10 * time.Second)
	if n := len(h.requests(t, source)); n != 1 || len(errs) != 1 || errs[0].Reason != "rejected" || errs[0].Status != 400 {
		t.Fatalf("one attempt, one rejection: %d %+v", n, errs)
	}
	h.faults(t, "1", "400")
	var ids []string
	for n := 0; n < 4; n++ {
		id, _ := c.Meter(context.Background(), "api.call", "cust-1", aforo.Data{"n": n})
		ids = append(ids, id)
	}
	c.Flush(10 * time.Second)
	if got := sizes(h.requests(t, source))[1:]; !reflect.DeepEqual(got, []int{4, 2, 2}) {
		t.Fatalf("halves sent again: %v", got)
	}
	h.allAccepted(t, h.key, source, ids)
}

func TestQueueOverflowDropsTheNewestOrBlocks(t *testing.T) {
	h, source := newHarness(t), newSource()
	var errs []*aforo.DeliveryError
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source, MaxQueue: 2, Linger: time.Hour,
		OnError: func(e *aforo.DeliveryError) { errs = append(errs, e) }})
	for n := 0; n < 3; n++ {
		c.Meter(context.Background(), "api.call", "cust-1", aforo.Data{"n": n})
	}
	if len(errs) != 1 || errs[0].Reason != "overflow" || !strings.Contains(string(errs[0].Lines[0]), `"n":2`) {
		t.Fatalf("%+v", errs)
	}
	c.Close(10 * time.Second)
	if got := len(h.sent(t, source)); got != 2 {
		t.Fatalf("%d", got)
	}

	blocking := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source, MaxQueue: 1,
		BatchSize: 1, Linger: -1, Overflow: "block", BlockTimeout: 30 * time.Second})
	for n := 0; n < 5; n++ {
		blocking.Meter(context.Background(), "api.call", "cust-1", aforo.Data{"n": n})
	}
	blocking.Close(10 * time.Second)
	if s := blocking.Stats(); s.Dropped != 0 || len(h.sent(t, source)) != 7 {
		t.Fatalf("block waits for room: %+v", s)
	}
}

func TestRetriesExhaustedWithoutASpoolAreReportedAsDropped(t *testing.T) {
	var errs []*aforo.DeliveryError
	c := newClient(t, aforo.Options{Endpoint: closedPort(t), APIKey: "afk_x_y", MaxRetries: 2,
		BackoffBase: 10 * time.Millisecond, OnError: func(e *aforo.DeliveryError) { errs = append(errs, e) }})
	c.Meter(context.Background(), "api.call", "cust-1", nil)
	c.Flush(5 * time.Second)
	c.Close(time.Second)
	if s := c.Stats(); len(errs) != 1 || errs[0].Reason != "dropped" || s.Retries != 2 || s.Requests != 3 {
		t.Fatalf("%+v %+v", errs, s)
	}
}

// TestSpoolChild is the process the spool test kills: it meters into a spool, then SIGKILLs itself.
func TestSpoolChild(t *testing.T) {
	dir := os.Getenv("AFORO_SPOOL_CHILD")
	if dir == "" {
		t.Skip("run by TestSpooledEventsSurviveAKilledProcess")
	}
	c := newClient(t, aforo.Options{Endpoint: os.Getenv("AFORO_SPOOL_ENDPOINT"), APIKey: "afk_x_y",
		Source: os.Getenv("AFORO_SPOOL_SOURCE"), SpoolDir: dir, BatchSize: 2})
	for n := 0; n < 5; n++ {
		id, _ := c.Meter(context.Background(), "api.call", "cust-1", aforo.Data{"n": n})
		fmt.Println("ID", id)
	}
	p, _ := os.FindProcess(os.Getpid())
	p.Kill()
	time.Sleep(time.Minute)
}

func TestSpooledEventsSurviveAKilledProcessAndAreSentByTheNext(t *testing.T) {
	h, source := newHarness(t), newSource()
	spool := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestSpoolChild$")
	child.Env = append(os.Environ(), "AFORO_SPOOL_CHILD="+spool, "AFORO_SPOOL_SOURCE="+source,
		"AFORO_SPOOL_ENDPOINT="+closedPort(t))
	out, err := child.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != -1 { // killed by a signal
		t.Fatalf("the child was not killed: %v\n%s", err, out)
	}
	var ids []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "ID ") {
			ids = append(ids, line[3:])
		}
	}
	if len(ids) != 5 {
		t.Fatalf("%s", out)
	}
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source, SpoolDir: spool})
	if _, err := aforo.New(aforo.Options{Endpoint: h.proxy, APIKey: h.key, SpoolDir: spool}); !errors.Is(err, aforo.ErrSpoolLocked) {
		t.Fatalf("a second client on the same spool: %v", err)
	}
	if !c.Flush(10 * time.Second) {
		t.Fatal("not flushed")
	}
	c.Close(time.Second)
	var got []string
	for _, e := range h.sent(t, source) {
		got = append(got, e["id"].(string))
	}
	if !reflect.DeepEqual(got, ids) {
		t.Fatalf("in order: %v vs %v", got, ids)
	}
	if left, _ := filepath.Glob(filepath.Join(spool, "seg-*")); len(left) != 0 {
		t.Fatalf("segments left: %v", left)
	}
	h.allAccepted(t, h.key, source, ids)
}

func TestCloseFlushesWhatIsQueued(t *testing.T) {
	h, source := newHarness(t), newSource()
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source, Linger: time.Hour})
	id, _ := c.Meter(context.Background(), "api.call", "cust-1", nil)
	c.Close(10 * time.Second)
	if sent := h.sent(t, source); len(sent) != 1 || sent[0]["id"] != id {
		t.Fatalf("%v", sent)
	}
	if _, err := c.Meter(context.Background(), "api.call", "cust-1", nil); err == nil {
		t.Fatal("metering after Close must fail")
	}
}

func TestEventsAreCheckedWhenCreated(t *testing.T) {
	h := newHarness(t)
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key})
	defer c.Close(time.Second)
	ctx := context.Background()
	if _, err := c.Meter(ctx, "api.call", "", nil); err == nil || !strings.Contains(err.Error(), "subject") {
		t.Fatal(err)
	}
	if _, err := c.Meter(ctx, "api.call", "cust-1", aforo.Data{"x": math.NaN()}); err == nil {
		t.Fatal("NaN accepted")
	}
	if _, err := c.Meter(ctx, "api.call", "cust-1", aforo.Data{"pad": strings.Repeat("x", 1<<20)}); err == nil {
		t.Fatal("an event too large accepted")
	}
	if _, err := c.Meter(aforo.WithCustomer(ctx, "cust-1"), "api.call", "", nil); err != nil {
		t.Fatal(err) // the context's customer
	}
}

func TestMetered(t *testing.T) {
	h, source := newHarness(t), newSource()
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.key, Source: source})
	ctx := aforo.WithAgent(aforo.WithCustomer(context.Background(), "cust-2"), "nightly")
	c.Metered(ctx, "report.generate", func(ctx context.Context) (aforo.Data, error) {
		return aforo.Data{"quantity": 3}, nil
	})
	if err := c.Metered(ctx, "report.fail", func(ctx context.Context) (aforo.Data, error) {
		return nil, errors.New("disk full")
	}); err == nil || err.Error() != "disk full" {
		t.Fatalf("the function's error comes back: %v", err)
	}
	c.Metered(context.Background(), "report.generate", func(ctx context.Context) (aforo.Data, error) { return nil, nil })
	if c.Stats().Unattributed != 1 {
		t.Fatal("a call with no customer is counted")
	}
	c.Close(10 * time.Second)
	events := map[string]map[string]any{}
	for _, e := range h.sent(t, source) {
		events[e["type"].(string)] = e
	}
	ok, failed := events["report.generate"], events["report.fail"]
	data, fdata := ok["data"].(map[string]any), failed["data"].(map[string]any)
	if len(events) != 2 || ok["subject"] != "cust-2" || data["outcome"] != "ok" || data["quantity"] != 3.0 ||
		fdata["outcome"] != "error" || fdata["error"] != "disk full" {
		t.Fatalf("%+v", events)
	}
}

func TestMiddlewareMetersAServeMux(t *testing.T) {
	h, source := newHarness(t), newSource()
	c := newClient(t, aforo.Options{Endpoint: h.proxy, APIKey: h.aiKey, Source: source, Linger: time.Hour})
	mux := http.NewServeMux()
	mux.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}")) })
	mux.HandleFunc("/orders", func(w http.ResponseWriter, r *http.Request) {
		aforo.SetCustomer(r.Context(), "ai-cust-2") // learnt inside the request
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	mux.HandleFunc("/boom", func(w http.ResponseWriter, r *http.Request) { panic("bug") })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {})
	server := httptest.NewServer(c.Middleware(mux, aforo.MiddlewareOptions{}))
	get := func(method, path, customer string) int {
		req, _ := http.NewRequest(method, server.URL+path, nil)
		if customer != "" {
			req.Header.Set("X-Customer-Id", customer)
		}
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0 // the panicking handler: the server drops the connection
		}
		r.Body.Close()
		return r.StatusCode
	}
	statuses := []int{get("GET", "/items/42", "ai-cust-1"), get("POST", "/orders", ""), get("GET", "/missing", "ai-cust-1"),
		get("GET", "/boom", "ai-cust-1"), get("GET", "/healthz", "ai-cust-1"), get("GET", "/nowhere", "ai-cust-1"),
		get("GET", "/items/7", "")}
	server.Close()
	if !reflect.DeepEqual(statuses, []int{200, 201, 404, 0, 200, 404, 200}) {
		t.Fatalf("%v", statuses)
	}
	c.Flush(10 * time.Second)
	c.Close(time.Second)
	if c.Stats().Unattributed != 1 {
		t.Fatal("nobody to bill: counted")
	}
	routes := map[string]map[string]any{}
	for _, e := range h.sent(t, source) {
		d := e["data"].(map[string]any)
		routes[fmt.Sprint(d["method"], " ", d["route"])] = e
	}
	if len(routes) != 4 || routes["POST /orders"]["subject"] != "ai-cust-2" {
		t.Fatalf("%+v", routes)
	}
	for key, status := range map[string]float64{"GET /items/": 200, "POST /orders": 201, "GET /missing": 404, "GET /boom": 500} {
		if got := routes[key]["data"].(map[string]any)["status"]; got != status {
			t.Fatalf("%s: status %v", key, got)
		}
	}
	item := routes["GET /items/"]
	if len(item["data"].(map[string]any)) != 4 || item["subject"] != "ai-cust-1" {
		t.Fatalf("route, method, status, latency_ms only: %+v", item)
	}
	r := h.ledger(t, h.aiKey, source, item["id"].(string), 1).Records[0]
	if r.Status != "accepted" || r.Tier != "sdk" || money(r.Revenue) != "0.001" {
		t.Fatalf("%+v", r)
	}
}
