// Package aforo meters usage into Aforo: CloudEvents queued by Meter and delivered in batches by
// a background goroutine, with retries, an optional on-disk spool, and net/http middleware.
//
//	client, _ := aforo.New(aforo.Options{Endpoint: "http://127.0.0.1:8080", APIKey: "afk_..."})
//	defer client.Close(10 * time.Second)
//	client.Meter(ctx, "api.call", "cust-1", aforo.Data{"route": "/v2/search"})
package aforo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Version of this SDK, sent in the Aforo-SDK header.
const Version = "0.1.0"

const sdkName = "go"

// Options configure a Client; zero values take the defaults shown.
type Options struct {
	Endpoint      string        // Aforo's base URL (or AFORO_ENDPOINT)
	APIKey        string        // a tenant API key, afk_... (or AFORO_API_KEY)
	Source        string        // the CloudEvents source (part of the idempotency key); "sdk/go"
	BatchSize     int           // events per request, 1..1000; 100
	Linger        time.Duration // how long a partial batch waits for company; 1s (negative: none)
	MaxQueue      int           // in-memory queue bound; 10000
	Overflow      string        // when the queue is full: "drop" the new event (default) or "block"
	BlockTimeout  time.Duration // how long "block" waits before dropping; 5s
	MaxRetries    int           // retries per batch before it is dropped (never, with a spool); 10 (negative: none)
	BackoffBase   time.Duration // 200ms
	BackoffMax    time.Duration // 30s
	Timeout       time.Duration // per request; 10s
	SpoolDir      string        // keep every event on disk until Aforo acknowledged it
	SpoolMaxBytes int64         // 256 MiB
	// OnError gets the events that will not be delivered: rejected, dropped, overflow.
	OnError    func(*DeliveryError)
	Logger     *log.Logger  // log.Default()
	HTTPClient *http.Client // one with Timeout
}

func (o *Options) defaults() error {
	if o.Endpoint == "" {
		o.Endpoint = os.Getenv("AFORO_ENDPOINT")
	}
	if o.APIKey == "" {
		o.APIKey = os.Getenv("AFORO_API_KEY")
	}
	if o.Endpoint == "" {
		return errors.New("aforo: Endpoint is required (or set AFORO_ENDPOINT), e.g. http://127.0.0.1:8080")
	}
	if o.APIKey == "" {
		return errors.New("aforo: APIKey is required (or set AFORO_API_KEY): `aforo keys create --tenant T`")
	}
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.Source == "" {
		o.Source = "sdk/go"
	}
	if o.BatchSize == 0 {
		o.BatchSize = 100
	}
	if o.BatchSize < 1 || o.BatchSize > MaxBatchEvents {
		return errors.New("aforo: BatchSize must be between 1 and 1000")
	}
	set(&o.Linger, time.Second)
	if o.Linger < 0 {
		o.Linger = 0
	}
	if o.MaxQueue == 0 {
		o.MaxQueue = 10000
	}
	if o.Overflow == "" {
		o.Overflow = "drop"
	}
	if o.Overflow != "drop" && o.Overflow != "block" {
		return errors.New(`aforo: Overflow must be "drop" or "block"`)
	}
	set(&o.BlockTimeout, 5*time.Second)
	if o.MaxRetries == 0 {
		o.MaxRetries = 10
	} else if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	set(&o.BackoffBase, 200*time.Millisecond)
	set(&o.BackoffMax, 30*time.Second)
	set(&o.Timeout, 10*time.Second)
	if o.SpoolMaxBytes == 0 {
		o.SpoolMaxBytes = 256 << 20
	}
	if o.Logger == nil {
		o.Logger = log.Default()
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: o.Timeout}
	}
	return nil
}

// Stats are the client's counters.
type Stats struct {
	Queued, Delivered, Requests, Retries, Rejected, Dropped int
	Unattributed                                            int // calls metered with no customer
}

// Client delivers events to Aforo. Safe for concurrent use.
type Client struct {
	o        Options
	url      string
	headers  http.Header
	mu       sync.Mutex
	changed  *sync.Cond // broadcast when a batch is done (flushers, blocked producers)
	out      *outbound
	wake     chan struct{}
	flushing int
	closed   bool
	deadline time.Time
	stopped  chan struct{}
}

// New starts a client (and its sender goroutine); Close flushes and stops it.
func New(o Options) (*Client, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	out, err := newOutbound(&o)
	if err != nil {
		return nil, err
	}
	url := strings.TrimRight(o.Endpoint, "/")
	if !strings.HasSuffix(url, "/v1/events") {
		url += "/v1/events"
	}
	c := &Client{o: o, url: url, out: out, wake: make(chan struct{}, 1), stopped: make(chan struct{}),
		headers: http.Header{
			"Authorization": {"Bearer " + o.APIKey},
			"Content-Type":  {"application/cloudevents-batch+json"},
			"Aforo-Sdk":     {sdkName + "/" + Version},
			"User-Agent":    {"aforo-sdk-" + sdkName + "/" + Version},
		}}
	c.changed = sync.NewCond(&c.mu)
	go c.run()
	return c, nil
}

// Stats returns a copy of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.stats
}

// Meter queues one event and returns its id. subject "" means the context's customer. It fails
// at once for an event Aforo would refuse (no subject, data that is not JSON, too large).
func (c *Client) Meter(ctx context.Context, eventType, subject string, data Data, opts ...EventOption) (string, error) {
	if subject == "" {
		subject = CustomerFrom(ctx)
	}
	e, err := newEvent(c.o.Source, eventType, subject, data, opts)
	if err != nil {
		return "", err
	}
	line, err := encode(e)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return "", errors.New("aforo: this client is closed")
	}
	var errs []*DeliveryError
	if !c.out.put(line, time.Now()) {
		errs = c.waitForRoom(line)
	}
	c.mu.Unlock()
	c.poke()
	c.report(errs)
	return e.ID, nil
}

// waitForRoom applies the overflow policy (under the lock).
func (c *Client) waitForRoom(line []byte) []*DeliveryError {
	if c.o.Overflow == "block" {
		deadline := time.Now().Add(c.o.BlockTimeout)
		timer := time.AfterFunc(c.o.BlockTimeout, c.broadcast)
		defer timer.Stop()
		for time.Now().Before(deadline) {
			c.changed.Wait()
			if c.out.put(line, time.Now()) {
				return nil
			}
		}
	}
	return c.out.overflow(line)
}

// meterQuietly is for metering that must never break the metered code (middleware, Metered).
func (c *Client) meterQuietly(ctx context.Context, eventType, subject string, data Data, what string) {
	if subject == "" {
		subject = CustomerFrom(ctx)
	}
	if subject == "" {
		c.mu.Lock()
		c.out.stats.Unattributed++
		first := c.out.stats.Unattributed == 1
		c.mu.Unlock()
		if first {
			c.o.Logger.Printf("aforo: not metered (%s): no customer; use WithCustomer (counted in Stats().Unattributed)", what)
		}
		return
	}
	if _, err := c.Meter(ctx, eventType, subject, data); err != nil {
		c.o.Logger.Printf("aforo: could not meter %s: %v", what, err)
	}
}

// Flush sends everything queued now, ignoring the linger; true when nothing is left waiting.
func (c *Client) Flush(timeout time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flushing++
	defer func() { c.flushing-- }()
	c.poke()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, c.broadcast)
	defer timer.Stop()
	for !c.out.idle() && time.Now().Before(deadline) {
		c.changed.Wait()
	}
	return c.out.idle()
}

// Close flushes, then stops. Without a spool, what is undelivered at the deadline goes to
// OnError as "dropped"; with one it stays on disk for the next start.
func (c *Client) Close(timeout time.Duration) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.deadline = time.Now().Add(timeout)
	c.mu.Unlock()
	c.poke()
	select {
	case <-c.stopped:
	case <-time.After(timeout + time.Second):
	}
	c.mu.Lock()
	errs := c.out.abandon()
	c.mu.Unlock()
	c.report(errs)
}

func (c *Client) broadcast() {
	c.mu.Lock()
	c.changed.Broadcast()
	c.mu.Unlock()
}

func (c *Client) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Client) report(errs []*DeliveryError) {
	if c.o.OnError == nil {
		return
	}
	for _, e := range errs {
		c.o.OnError(e)
	}
}

// next waits until there is something to send; nil when closing is done.
func (c *Client) next() [][]byte {
	for {
		c.mu.Lock()
		now := time.Now()
		closing := c.closed
		if closing && (!now.Before(c.deadline) || c.out.idle()) {
			c.mu.Unlock()
			return nil
		}
		if lines := c.out.nextRequest(now, closing || c.flushing > 0); lines != nil {
			c.mu.Unlock()
			return lines
		}
		wait, ok := c.out.waitFor(now)
		if !ok {
			wait = time.Hour
		}
		if closing && c.deadline.Sub(now) < wait {
			wait = c.deadline.Sub(now)
		}
		c.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-c.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

func (c *Client) run() {
	defer close(c.stopped)
	for lines := c.next(); lines != nil; lines = c.next() {
		status, after, detail, err := c.post(lines)
		c.mu.Lock()
		var errs []*DeliveryError
		if err != nil {
			errs = c.out.failed(err, time.Now())
		} else {
			errs = c.out.answered(status, after, detail, time.Now())
		}
		c.changed.Broadcast()
		c.mu.Unlock()
		c.report(errs)
	}
	c.broadcast()
}

func (c *Client) post(lines [][]byte) (int, time.Duration, string, error) {
	req, err := http.NewRequest(http.MethodPost, c.url, bytes.NewReader(body(lines)))
	if err != nil {
		return 0, 0, "", err
	}
	req.Header = c.headers.Clone()
	r, err := c.o.HTTPClient.Do(req)
	if err != nil {
		return 0, 0, "", err
	}
	defer r.Body.Close()
	detail, _ := io.ReadAll(io.LimitReader(r.Body, 500))
	io.Copy(io.Discard, r.Body) // so the connection is reused
	return r.StatusCode, retryAfter(r.Header.Get("Retry-After")), string(detail), nil
}
