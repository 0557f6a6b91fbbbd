package io.aforo.sdk;

import java.util.concurrent.Callable;

/** Who is being metered on this thread: the customer (an event's subject) and the agent.
 * Mutable on purpose: a handler that learns the customer late calls {@link #setCustomer} and the
 * filter that opened the scope sees it when the request ends. Threads started inside inherit it. */
public final class Scope {
    private static final InheritableThreadLocal<Scope> CURRENT = new InheritableThreadLocal<>();

    volatile String customer;
    volatile String agent;
    volatile String route;

    Scope(String customer, String agent) {
        this.customer = customer;
        this.agent = agent;
    }

    /** The current thread's customer, null if none. */
    public static String customer() {
        Scope s = CURRENT.get();
        return s == null ? null : s.customer;
    }

    /** The current thread's agent, null if none. */
    public static String agent() {
        Scope s = CURRENT.get();
        return s == null ? null : s.agent;
    }

    /** Run fn with a customer and agent (null: inherited from the enclosing scope). */
    public static <T> T with(String customer, String agent, Callable<T> fn) throws Exception {
        Scope parent = CURRENT.get();
        Scope scope = new Scope(customer != null ? customer : parent == null ? null : parent.customer,
                agent != null ? agent : parent == null ? null : parent.agent);
        return run(scope, fn);
    }

    static <T> T run(Scope scope, Callable<T> fn) throws Exception {
        Scope previous = CURRENT.get();
        CURRENT.set(scope);
        try {
            return fn.call();
        } finally {
            CURRENT.set(previous);
        }
    }

    /** Name the customer of the current request or scope from inside it. */
    public static void setCustomer(String customer) {
        Scope s = CURRENT.get();
        if (s == null) throw new IllegalStateException("setCustomer() outside a request or Scope.with()");
        s.customer = customer;
    }

    /** Report the route template from a router the filter cannot see into. */
    public static void setRoute(String route) {
        Scope s = CURRENT.get();
        if (s == null) throw new IllegalStateException("setRoute() outside a request or Scope.with()");
        s.route = route;
    }
}
