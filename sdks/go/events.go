package aforo

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Data is an event's data object. Money should be a string or a json.Number, never a float64:
// Aforo reads numbers from their text, and a float64 may already be inexact.
type Data map[string]any

const specVersion = "1.0"

// MaxEventBytes: one event alone must fit in a request (Aforo takes 1 MiB per request).
const MaxEventBytes = 1<<20 - 2

// Event options: a fixed id (for events that have their own), or a time other than now.
type EventOption func(*event)

// WithID gives the event an id of its own (a resend with the same id is a duplicate in Aforo).
func WithID(id string) EventOption { return func(e *event) { e.ID = id } }

// WithTime sets the event's time (the time the usage happened).
func WithTime(t time.Time) EventOption { return func(e *event) { e.Time = rfc3339(t) } }

type event struct {
	SpecVersion string `json:"specversion"`
	ID          string `json:"id"`
	Source      string `json:"source"`
	Type        string `json:"type"`
	Subject     string `json:"subject"`
	Time        string `json:"time"`
	Data        Data   `json:"data,omitempty"`
}

func rfc3339(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// newID is a random (version 4) UUID, fixed when the event is created: every retry of the
// event carries it, so Aforo's ledger records a retry as a duplicate, never a second charge.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // the system's random source is broken: nothing sensible to do
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func newEvent(source, eventType, subject string, data Data, opts []EventOption) (*event, error) {
	if eventType == "" {
		return nil, errors.New("aforo: event type must be a non-empty string")
	}
	if subject == "" {
		return nil, errors.New("aforo: no subject: pass the customer, or meter with a context from WithCustomer")
	}
	e := &event{SpecVersion: specVersion, ID: newID(), Source: source, Type: eventType, Subject: subject,
		Time: rfc3339(time.Now()), Data: data}
	for _, opt := range opts {
		opt(e)
	}
	if e.ID == "" {
		return nil, errors.New("aforo: event id must be a non-empty string")
	}
	return e, nil
}

func encode(e *event) ([]byte, error) {
	line, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("aforo: event %s: %w", e.ID, err) // NaN, Inf, channels...
	}
	if len(line) > MaxEventBytes {
		return nil, fmt.Errorf("aforo: event %s is %d bytes; Aforo takes at most %d", e.ID, len(line), MaxEventBytes)
	}
	return line, nil
}
