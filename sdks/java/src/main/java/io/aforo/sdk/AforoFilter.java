package io.aforo.sdk;

import com.sun.net.httpserver.Filter;
import com.sun.net.httpserver.HttpExchange;
import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import java.util.function.Function;
import java.util.function.Predicate;

/**
 * A filter for the JDK's HTTP server that meters every request as an {@code api.call} event:
 * route template (the HttpContext's path), method, status, latency_ms. One line:
 * {@code server.createContext("/items/", handler).getFilters().add(new AforoFilter(aforo));}
 *
 * <p>The customer is the customer callback's answer, else what the handler set with
 * {@link Scope#setCustomer}, else the customer header ({@code X-Customer-Id}); everything metered
 * inside the handler is attributed to it too. Probes ({@link #DEFAULT_SKIP_PATHS}) are skipped.
 */
public final class AforoFilter extends Filter {
    public static final Set<String> DEFAULT_SKIP_PATHS =
            Set.of("/health", "/healthz", "/livez", "/readyz", "/ready", "/ping", "/metrics", "/favicon.ico");

    private final Aforo aforo;
    private String eventType = "api.call";
    private String customerHeader = "X-Customer-Id";
    private Function<HttpExchange, String> customer;
    private Set<String> skipPaths = DEFAULT_SKIP_PATHS;
    private Predicate<HttpExchange> skip = exchange -> false;

    public AforoFilter(Aforo aforo) {
        this.aforo = aforo;
    }

    public AforoFilter eventType(String v) { eventType = v; return this; }
    public AforoFilter customerHeader(String v) { customerHeader = v; return this; }
    /** Who to bill, from the exchange (overrides what the handler set and the header). */
    public AforoFilter customer(Function<HttpExchange, String> v) { customer = v; return this; }
    public AforoFilter skipPaths(Set<String> v) { skipPaths = v; return this; }
    public AforoFilter skip(Predicate<HttpExchange> v) { skip = v; return this; }

    @Override
    public String description() {
        return "Aforo usage metering";
    }

    @Override
    public void doFilter(HttpExchange exchange, Chain chain) throws IOException {
        if (skipPaths.contains(exchange.getRequestURI().getPath()) || skip.test(exchange)) {
            chain.doFilter(exchange);
            return;
        }
        long started = System.nanoTime();
        Scope scope = new Scope(exchange.getRequestHeaders().getFirst(customerHeader), Scope.agent());
        if (scope.customer == null) scope.customer = Scope.customer();
        int status = 500; // if the handler throws before answering, the server answers 500
        try {
            Scope.run(scope, () -> {
                chain.doFilter(exchange);
                return null;
            });
            status = exchange.getResponseCode();
        } catch (IOException | RuntimeException e) {
            throw e;
        } catch (Exception e) {
            throw new IOException(e);
        } finally {
            String route = scope.route != null ? scope.route : exchange.getHttpContext().getPath();
            String who = customer != null ? customer.apply(exchange) : null;
            Map<String, Object> data = new LinkedHashMap<>();
            data.put("route", route);
            data.put("method", exchange.getRequestMethod());
            data.put("status", status < 0 ? 500 : status);
            data.put("latency_ms", (System.nanoTime() - started) / 1000 / 1000.0);
            aforo.meterQuietly(eventType, who != null ? who : scope.customer, data,
                    exchange.getRequestMethod() + " " + route);
        }
    }
}
