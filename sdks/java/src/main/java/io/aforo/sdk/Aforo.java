package io.aforo.sdk;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.Callable;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.logging.Level;

/**
 * Meters usage into Aforo: {@link #meter} queues a CloudEvent and returns at once; a daemon thread
 * delivers batches with retries, optionally through an on-disk spool. Thread-safe.
 *
 * <pre>{@code
 * try (Aforo aforo = Aforo.builder().endpoint("http://127.0.0.1:8080").apiKey("afk_...").build()) {
 *     aforo.meter("api.call", "cust-1", Map.of("route", "/v2/search"));
 * }
 * }</pre>
 */
public final class Aforo implements AutoCloseable {
    public static final String VERSION = "0.1.0";
    static final String SDK_NAME = "java";
    /** One event alone must fit in a request (Aforo takes 1 MiB per request). */
    public static final int MAX_EVENT_BYTES = (1 << 20) - 2;
    private static final DateTimeFormatter RFC3339 =
            DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);

    /** Options; see {@link Builder} for the defaults. */
    static final class Options {
        String endpoint = System.getenv("AFORO_ENDPOINT");
        String apiKey = System.getenv("AFORO_API_KEY");
        String source = "sdk/java";
        int batchSize = 100;
        long lingerNanos = TimeUnit.SECONDS.toNanos(1);
        int maxQueue = 10_000;
        boolean blockOnOverflow;
        long blockTimeoutNanos = TimeUnit.SECONDS.toNanos(5);
        int maxRetries = 10;
        long backoffBaseNanos = TimeUnit.MILLISECONDS.toNanos(200);
        long backoffMaxNanos = TimeUnit.SECONDS.toNanos(30);
        Duration timeout = Duration.ofSeconds(10);
        Path spoolDir;
        long spoolMaxBytes = 256L << 20;
        Consumer<DeliveryError> onError;
    }

    /** Builds a client; every setting has a default. */
    public static final class Builder {
        private final Options o = new Options();

        /** Aforo's base URL (or AFORO_ENDPOINT), e.g. http://127.0.0.1:8080 */
        public Builder endpoint(String v) { o.endpoint = v; return this; }
        /** A tenant API key, afk_... (or AFORO_API_KEY). */
        public Builder apiKey(String v) { o.apiKey = v; return this; }
        /** The CloudEvents source of every event (part of the idempotency key); "sdk/java". */
        public Builder source(String v) { o.source = v; return this; }
        /** Events per request, 1..1000; 100. */
        public Builder batchSize(int v) { o.batchSize = v; return this; }
        /** How long a partial batch waits for company; 1 s. */
        public Builder linger(Duration v) { o.lingerNanos = v.toNanos(); return this; }
        /** In-memory queue bound; 10000. */
        public Builder maxQueue(int v) { o.maxQueue = v; return this; }
        /** When the queue is full, wait up to timeout for room (default: drop the new event at once). */
        public Builder blockOnOverflow(Duration timeout) { o.blockOnOverflow = true; o.blockTimeoutNanos = timeout.toNanos(); return this; }
        /** Retries per batch before it is dropped (never, with a spool); 10. */
        public Builder maxRetries(int v) { o.maxRetries = v; return this; }
        public Builder backoff(Duration base, Duration max) { o.backoffBaseNanos = base.toNanos(); o.backoffMaxNanos = max.toNanos(); return this; }
        /** Per request; 10 s. */
        public Builder timeout(Duration v) { o.timeout = v; return this; }
        /** Keep every event on disk until Aforo acknowledged it (survives exits and kills). */
        public Builder spoolDir(Path v) { o.spoolDir = v; return this; }
        public Builder spoolMaxBytes(long v) { o.spoolMaxBytes = v; return this; }
        /** Called with the events that will not be delivered: rejected, dropped, overflow. */
        public Builder onError(Consumer<DeliveryError> v) { o.onError = v; return this; }

        public Aforo build() {
            if (o.endpoint == null || o.endpoint.isEmpty()) {
                throw new IllegalArgumentException("endpoint is required (or set AFORO_ENDPOINT), e.g. http://127.0.0.1:8080");
            }
            if (o.apiKey == null || o.apiKey.isEmpty()) {
                throw new IllegalArgumentException("apiKey is required (or set AFORO_API_KEY): `aforo keys create --tenant T`");
            }
            if (o.batchSize < 1 || o.batchSize > Outbound.MAX_BATCH_EVENTS) {
                throw new IllegalArgumentException("batchSize must be between 1 and 1000");
            }
            if (o.maxQueue < 1 || o.maxRetries < 0 || o.lingerNanos < 0) {
                throw new IllegalArgumentException("maxQueue must be positive, maxRetries and linger not negative");
            }
            return new Aforo(o);
        }
    }

    public static Builder builder() {
        return new Builder();
    }

    private final Options o;
    private final URI uri;
    private final HttpClient http;
    private final ReentrantLock lock = new ReentrantLock();
    private final Condition changed = lock.newCondition(); // work to do, or a batch done
    private final Outbound out;
    private final Thread sender;
    private final Thread shutdownHook;
    private int flushing;
    private boolean closed;
    private long deadline;

    private Aforo(Options o) {
        this.o = o;
        String base = o.endpoint.replaceAll("/+$", "");
        uri = URI.create(base.endsWith("/v1/events") ? base : base + "/v1/events");
        // HTTP/1.1: the default would try an h2c upgrade on http:// URLs, which servers such as
        // uvicorn (aforo serve) refuse with a 400 for a request with a body.
        http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).connectTimeout(o.timeout).build();
        out = new Outbound(o);
        sender = new Thread(this::run, "aforo-sdk-sender");
        sender.setDaemon(true);
        sender.start();
        shutdownHook = new Thread(() -> close(Duration.ofSeconds(10)), "aforo-sdk-shutdown");
        Runtime.getRuntime().addShutdownHook(shutdownHook);
    }

    /** A copy of the counters. */
    public Stats stats() {
        lock.lock();
        try {
            return out.stats();
        } finally {
            lock.unlock();
        }
    }

    /** Queue one event; returns its id. subject null: the current {@link Scope}'s customer.
     * Throws IllegalArgumentException at once for an event Aforo would refuse. */
    public String meter(String type, String subject, Map<String, ?> data) {
        return meter(type, subject, data, null, null);
    }

    /** As {@link #meter(String, String, Map)}, with an id of the event's own and the time it happened. */
    public String meter(String type, String subject, Map<String, ?> data, String id, Instant time) {
        String customer = subject != null ? subject : Scope.customer();
        if (type == null || type.isEmpty()) throw new IllegalArgumentException("type must be a non-empty string");
        if (customer == null || customer.isEmpty()) {
            throw new IllegalArgumentException("no subject: pass the customer, or meter inside Scope.with(customer, ...)");
        }
        Map<String, Object> event = new LinkedHashMap<>();
        event.put("specversion", "1.0");
        // The id is fixed now: a retry of this event is a duplicate in Aforo, never a second charge.
        event.put("id", id != null ? id : UUID.randomUUID().toString());
        event.put("source", o.source);
        event.put("type", type);
        event.put("subject", customer);
        event.put("time", RFC3339.format(time != null ? time : Instant.now()));
        if (data != null && !data.isEmpty()) event.put("data", data);
        byte[] line = Json.encode(event).getBytes(StandardCharsets.UTF_8);
        if (line.length > MAX_EVENT_BYTES) {
            throw new IllegalArgumentException("event " + event.get("id") + " is " + line.length
                    + " bytes; Aforo takes at most " + MAX_EVENT_BYTES);
        }
        List<DeliveryError> errors = List.of();
        lock.lock();
        try {
            if (closed) throw new IllegalStateException("this Aforo client is closed");
            if (!out.put(line, System.nanoTime())) errors = waitForRoom(line);
            changed.signalAll();
        } finally {
            lock.unlock();
        }
        report(errors);
        return (String) event.get("id");
    }

    private List<DeliveryError> waitForRoom(byte[] line) {
        long left = o.blockOnOverflow ? o.blockTimeoutNanos : 0;
        while (left > 0) {
            try {
                left = changed.awaitNanos(left);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
            if (out.put(line, System.nanoTime())) return List.of();
        }
        return out.overflow(line);
    }

    /** Metering that must never break the metered code (the filter, metered()). */
    void meterQuietly(String type, String customer, Map<String, ?> data, String what) {
        if (customer == null || customer.isEmpty()) customer = Scope.customer();
        if (customer == null || customer.isEmpty()) {
            boolean first;
            lock.lock();
            try {
                first = ++out.unattributed == 1;
            } finally {
                lock.unlock();
            }
            if (first) {
                Outbound.LOG.warning("not metered (" + what + "): no customer; use Scope.with(customer, ...) "
                        + "(counted in stats().unattributed())");
            }
            return;
        }
        try {
            meter(type, customer, data);
        } catch (RuntimeException e) {
            Outbound.LOG.severe("could not meter " + what + ": " + e.getMessage());
        }
    }

    /**
     * Run fn and meter the call as one event: outcome ("ok" or "error"), error (the exception's
     * class), duration_ms and the quantity quantityOf computes from the result (null: none). The
     * customer is given, or the current Scope's; fn's exception is rethrown as is.
     */
    public <T> T metered(String type, String customer, Callable<T> fn, Function<? super T, ?> quantityOf) throws Exception {
        long started = System.nanoTime();
        Map<String, Object> data = new LinkedHashMap<>();
        try {
            T result = fn.call();
            data.put("outcome", "ok");
            Object quantity = quantityOf == null ? null : quantityOf.apply(result);
            if (quantity != null) data.put("quantity", quantity);
            return result;
        } catch (Exception e) {
            data.put("outcome", "error");
            data.put("error", e.getClass().getSimpleName());
            throw e;
        } finally {
            data.put("duration_ms", (System.nanoTime() - started) / 1000 / 1000.0);
            meterQuietly(type, customer, data, type);
        }
    }

    /** Send everything queued now, ignoring the linger; true when nothing is left waiting. */
    public boolean flush(Duration timeout) {
        lock.lock();
        try {
            flushing++;
            changed.signalAll();
            long left = timeout.toNanos();
            while (!out.idle() && left > 0) left = changed.awaitNanos(left);
            return out.idle();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return out.idle();
        } finally {
            flushing--;
            lock.unlock();
        }
    }

    /** Flush (10 s at most), then stop. */
    @Override
    public void close() {
        close(Duration.ofSeconds(10));
    }

    /** Flush, then stop. Without a spool, what is undelivered at the deadline goes to onError as
     * "dropped"; with one it stays on disk for the next start. */
    public void close(Duration timeout) {
        lock.lock();
        try {
            if (closed) return;
            closed = true;
            deadline = System.nanoTime() + timeout.toNanos();
            changed.signalAll();
        } finally {
            lock.unlock();
        }
        try {
            sender.join(timeout.toMillis() + 1000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        if (Thread.currentThread() != shutdownHook) {
            try {
                Runtime.getRuntime().removeShutdownHook(shutdownHook);
            } catch (IllegalStateException shuttingDown) {
                // the JVM is exiting: the hook is running or about to
            }
        }
        List<DeliveryError> errors;
        lock.lock();
        try {
            errors = out.abandon();
        } finally {
            lock.unlock();
        }
        report(errors);
    }

    private void report(List<DeliveryError> errors) {
        if (o.onError == null) return;
        for (DeliveryError error : errors) {
            try {
                o.onError.accept(error);
            } catch (RuntimeException e) {
                Outbound.LOG.log(Level.SEVERE, "onError callback failed", e);
            }
        }
    }

    /** Under the lock: wait until there is something to send; null when closing is done. */
    private List<byte[]> next() throws InterruptedException {
        while (true) {
            long now = System.nanoTime();
            if (closed && (now >= deadline || out.idle())) return null;
            List<byte[]> lines = out.nextRequest(now, closed || flushing > 0);
            if (lines != null) return lines;
            long wait = out.waitNanos(now);
            if (wait < 0) wait = TimeUnit.HOURS.toNanos(1);
            if (closed) wait = Math.min(wait, deadline - now);
            changed.awaitNanos(Math.max(wait, 1));
        }
    }

    private void run() {
        while (true) {
            List<byte[]> lines;
            lock.lock();
            try {
                lines = next();
            } catch (InterruptedException e) {
                return;
            } finally {
                lock.unlock();
            }
            if (lines == null) break;
            List<DeliveryError> errors;
            try {
                HttpResponse<String> r = http.send(HttpRequest.newBuilder(uri).timeout(o.timeout)
                        .header("Authorization", "Bearer " + o.apiKey)
                        .header("Content-Type", "application/cloudevents-batch+json")
                        .header("Aforo-SDK", SDK_NAME + "/" + VERSION)
                        .header("User-Agent", "aforo-sdk-" + SDK_NAME + "/" + VERSION)
                        .POST(HttpRequest.BodyPublishers.ofByteArray(body(lines))).build(),
                        HttpResponse.BodyHandlers.ofString());
                String detail = r.body().length() > 500 ? r.body().substring(0, 500) : r.body();
                lock.lock();
                try {
                    errors = out.answered(r.statusCode(), r.headers().firstValue("Retry-After").orElse(null), detail,
                            System.nanoTime());
                    changed.signalAll();
                } finally {
                    lock.unlock();
                }
            } catch (java.io.IOException e) {
                lock.lock();
                try {
                    errors = out.failed(e, System.nanoTime());
                } finally {
                    lock.unlock();
                }
            } catch (InterruptedException e) {
                return;
            }
            report(errors);
        }
        lock.lock();
        try {
            changed.signalAll();
        } finally {
            lock.unlock();
        }
    }

    private static byte[] body(List<byte[]> lines) {
        int size = 2 + Math.max(0, lines.size() - 1);
        for (byte[] line : lines) size += line.length;
        byte[] body = new byte[size];
        int at = 0;
        body[at++] = '[';
        for (int i = 0; i < lines.size(); i++) {
            if (i > 0) body[at++] = ',';
            System.arraycopy(lines.get(i), 0, body, at, lines.get(i).length);
            at += lines.get(i).length;
        }
        body[at] = ']';
        return body;
    }
}
