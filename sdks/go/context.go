package aforo

import "context"

// Scope is who is being metered in a context: the customer (an event's subject) and the agent.
// A pointer travels in the context so a handler that learns the customer late (after
// authentication) can set it with SetCustomer and the middleware sees it when the request ends.
type Scope struct {
	Customer string
	Agent    string
	Route    string
}

type scopeKey struct{}

func scopeOf(ctx context.Context) *Scope {
	if ctx == nil {
		return nil
	}
	s, _ := ctx.Value(scopeKey{}).(*Scope)
	return s
}

// WithCustomer returns a context whose metered calls are billed to customer.
func WithCustomer(ctx context.Context, customer string) context.Context {
	s := Scope{Customer: customer}
	if parent := scopeOf(ctx); parent != nil {
		s.Agent, s.Route = parent.Agent, parent.Route
	}
	return context.WithValue(ctx, scopeKey{}, &s)
}

// WithAgent returns a context whose metered calls carry agent.
func WithAgent(ctx context.Context, agent string) context.Context {
	s := Scope{Agent: agent}
	if parent := scopeOf(ctx); parent != nil {
		s.Customer, s.Route = parent.Customer, parent.Route
	}
	return context.WithValue(ctx, scopeKey{}, &s)
}

// SetCustomer names the customer of the current request (inside the middleware) from a handler.
func SetCustomer(ctx context.Context, customer string) {
	if s := scopeOf(ctx); s != nil {
		s.Customer = customer
	}
}

// SetRoute reports the route template from a router the middleware cannot see into.
func SetRoute(ctx context.Context, route string) {
	if s := scopeOf(ctx); s != nil {
		s.Route = route
	}
}

// CustomerFrom is the customer the context names, "" if none.
func CustomerFrom(ctx context.Context) string {
	if s := scopeOf(ctx); s != nil {
		return s.Customer
	}
	return ""
}
