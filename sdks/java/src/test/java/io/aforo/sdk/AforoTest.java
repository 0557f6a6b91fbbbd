package io.aforo.sdk;

import static io.aforo.sdk.Harness.money;
import static io.aforo.sdk.Harness.record;
import static io.aforo.sdk.Harness.sizes;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.math.BigDecimal;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The client and the filter against a real Aforo: delivery, tier, revenue, batching, retries,
 * refusals, overflow, the spool across a killed process, flush on close, metered() and the filter. */
@SuppressWarnings("unchecked")
class AforoTest {
    private final Harness h = new Harness();

    private static Map<String, Object> data(Object v) {
        return (Map<String, Object>) ((Map<String, Object>) v).get("data");
    }

    @Test
    void meterLandsInTheLedgerAsTierSdkWithItsRevenue() throws Exception {
        String source = Harness.newSource();
        List<String> ids = new ArrayList<>();
        try (Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.aiKey).source(source).build()) {
            for (int i = 0; i < 3; i++) ids.add(aforo.meter("api.call", "ai-cust-1", Map.of("route", "/v1/search")));
            assertTrue(aforo.flush(Duration.ofSeconds(10)));
        }
        List<Map<String, Object>> requests = h.requests(source);
        assertEquals(List.of(3), sizes(requests)); // one batch
        assertEquals("java/" + Aforo.VERSION, requests.get(0).get("sdk"));
        for (String id : ids) {
            Map<String, Object> event = h.ledger(h.aiKey, source, id, 1);
            assertEquals("accepted", event.get("status"));
            Map<String, Object> r = record(event, 0);
            // nimbus's plan: api_calls per unit 0.001, cost 0.0002
            assertEquals(List.of("sdk", "0.001", "0.0002"), List.of(r.get("tier"), money(r.get("revenue")), money(r.get("cost"))));
        }
    }

    @Test
    void batchesCloseOnSizeAndOnLinger() throws Exception {
        String source = Harness.newSource();
        Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source).batchSize(10)
                .linger(Duration.ofHours(1)).build();
        for (int i = 0; i < 25; i++) aforo.meter("api.call", "cust-1", Map.of("i", i));
        h.waitSent(source, 20);
        assertEquals(List.of(10, 10), sizes(h.requests(source))); // the 5 linger
        aforo.close();
        assertEquals(List.of(10, 10, 5), sizes(h.requests(source)));
        try (Aforo lingering = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source)
                .linger(Duration.ofMillis(200)).build()) {
            lingering.meter("api.call", "cust-1", null);
            assertEquals(26, h.waitSent(source, 26).size()); // sent by the linger alone
        }
    }

    @Test
    void retriesHonourRetryAfterAndARetryIsADuplicateNeverASecondCharge() throws Exception {
        String source = Harness.newSource();
        h.faults("1", "503", "429", "drop", "ack_lost");
        String id;
        try (Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.aiKey).source(source)
                .backoff(Duration.ofMillis(10), Duration.ofSeconds(30)).build()) {
            id = aforo.meter("api.call", "ai-cust-2", null);
            assertTrue(aforo.flush(Duration.ofSeconds(30)));
            assertEquals(List.of(4L, 1L), List.of(aforo.stats().retries(), aforo.stats().delivered()));
        }
        List<Map<String, Object>> attempts = h.requests(source);
        assertEquals(List.of("503", "429", "drop", "ack_lost", "pass"),
                attempts.stream().map(a -> a.get("fault")).collect(Collectors.toList()));
        for (Map<String, Object> a : attempts) {
            assertEquals(id, ((Map<String, Object>) ((List<Object>) a.get("events")).get(0)).get("id"));
        }
        double t0 = ((BigDecimal) attempts.get(0).get("t")).doubleValue();
        double t1 = ((BigDecimal) attempts.get(1).get("t")).doubleValue();
        double t2 = ((BigDecimal) attempts.get(2).get("t")).doubleValue();
        assertTrue(t1 - t0 >= 0.95 && t2 - t1 >= 0.95, "Retry-After: 1 honoured after the 503 and the 429");
        Map<String, Object> event = h.ledger(h.aiKey, source, id, 2);
        assertEquals("accepted", event.get("status"));
        Map<String, Object> first = record(event, 0);
        Map<String, Object> second = record(event, 1);
        assertEquals(List.of("accepted", "sdk", "0.001"), List.of(first.get("status"), first.get("tier"), money(first.get("revenue"))));
        assertEquals(List.of("duplicate", "sdk"), List.of(second.get("status"), second.get("tier")));
        assertEquals(null, second.get("revenue"));
    }

    @Test
    void aRefusedEventIsNotRetriedAndARefusedBatchIsSplit() throws Exception {
        String source = Harness.newSource();
        List<DeliveryError> errors = new ArrayList<>();
        List<String> ids = new ArrayList<>();
        try (Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source).onError(errors::add).build()) {
            h.faults("1", "400");
            aforo.meter("api.call", "cust-1", null);
            aforo.flush(Duration.ofSeconds(10));
            assertEquals(1, h.requests(source).size()); // never retried
            assertEquals(1, errors.size());
            assertEquals(List.of("rejected", 400, 1), List.of(errors.get(0).reason(), errors.get(0).status(), errors.get(0).lines().size()));
            h.faults("1", "400");
            for (int n = 0; n < 4; n++) ids.add(aforo.meter("api.call", "cust-1", Map.of("n", n)));
            aforo.flush(Duration.ofSeconds(10));
        }
        assertEquals(List.of(4, 2, 2), sizes(h.requests(source)).subList(1, 4)); // halves sent again
        for (String id : ids) assertEquals("accepted", h.ledger(h.key, source, id, 1).get("status"));
    }

    @Test
    void queueOverflowDropsTheNewestOrBlocks() throws Exception {
        String source = Harness.newSource();
        List<DeliveryError> errors = new ArrayList<>();
        Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source).maxQueue(2)
                .linger(Duration.ofHours(1)).onError(errors::add).build();
        for (int n = 0; n < 3; n++) aforo.meter("api.call", "cust-1", Map.of("n", n));
        assertEquals(1, errors.size());
        assertEquals("overflow", errors.get(0).reason());
        assertTrue(new String(errors.get(0).lines().get(0)).contains("\"n\":2"));
        aforo.close();
        assertEquals(2, h.sent(source).size());

        Aforo blocking = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source).maxQueue(1).batchSize(1)
                .linger(Duration.ZERO).blockOnOverflow(Duration.ofSeconds(30)).build();
        for (int n = 0; n < 5; n++) blocking.meter("api.call", "cust-1", Map.of("n", n));
        blocking.close();
        assertEquals(0, blocking.stats().dropped());
        assertEquals(7, h.sent(source).size());
    }

    @Test
    void retriesExhaustedWithoutASpoolAreReportedAsDropped() throws Exception {
        List<DeliveryError> errors = new ArrayList<>();
        Aforo aforo = Aforo.builder().endpoint(Harness.closedPort()).apiKey("afk_x_y").maxRetries(2)
                .backoff(Duration.ofMillis(10), Duration.ofSeconds(1)).onError(errors::add).build();
        aforo.meter("api.call", "cust-1", null);
        aforo.flush(Duration.ofSeconds(5));
        aforo.close(Duration.ofSeconds(1));
        assertEquals(1, errors.size());
        assertEquals("dropped", errors.get(0).reason());
        assertEquals(List.of(2L, 3L), List.of(aforo.stats().retries(), aforo.stats().requests()));
    }

    /** The process the spool test kills: meters into a spool, then halts without shutdown hooks. */
    public static void main(String[] args) throws Exception {
        Aforo aforo = Aforo.builder().endpoint(args[0]).apiKey("afk_x_y").source(args[1]).spoolDir(Path.of(args[2]))
                .batchSize(2).build();
        for (int n = 0; n < 5; n++) System.out.println("ID " + aforo.meter("api.call", "cust-1", Map.of("n", n)));
        System.out.flush();
        Runtime.getRuntime().halt(137); // as a kill -9: no flush, no hooks
    }

    @Test
    void spooledEventsSurviveAKilledProcessAndAreSentByTheNext(@TempDir Path spool) throws Exception {
        String source = Harness.newSource();
        // The launcher loads the classes through its own class loader: name their places explicitly.
        String classpath = Path.of(Aforo.class.getProtectionDomain().getCodeSource().getLocation().toURI())
                + java.io.File.pathSeparator
                + Path.of(AforoTest.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        Process child = new ProcessBuilder(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "-cp", classpath, AforoTest.class.getName(),
                Harness.closedPort(), source, spool.toString()).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        String out = new String(child.getInputStream().readAllBytes());
        assertTrue(child.waitFor(60, TimeUnit.SECONDS));
        assertEquals(137, child.exitValue());
        List<String> ids = out.lines().filter(l -> l.startsWith("ID ")).map(l -> l.substring(3)).collect(Collectors.toList());
        assertEquals(5, ids.size());
        try (Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source).spoolDir(spool).build()) {
            assertThrows(SpoolLockedException.class,
                    () -> Aforo.builder().endpoint(h.proxy).apiKey(h.key).spoolDir(spool).build());
            assertTrue(aforo.flush(Duration.ofSeconds(10)));
        }
        assertEquals(ids, h.sent(source).stream().map(e -> e.get("id")).collect(Collectors.toList())); // in order
        try (var left = Files.list(spool)) {
            assertEquals(0, left.filter(p -> p.getFileName().toString().startsWith("seg-")).count());
        }
        for (String id : ids) assertEquals("accepted", h.ledger(h.key, source, id, 1).get("status"));
    }

    @Test
    void closeFlushesWhatIsQueued() throws Exception {
        String source = Harness.newSource();
        Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source).linger(Duration.ofHours(1)).build();
        String id = aforo.meter("api.call", "cust-1", null);
        aforo.close();
        assertEquals(List.of(id), h.sent(source).stream().map(e -> e.get("id")).collect(Collectors.toList()));
        assertThrows(IllegalStateException.class, () -> aforo.meter("api.call", "cust-1", null));
    }

    @Test
    void eventsAreCheckedWhenCreated() {
        try (Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.key).build()) {
            assertThrows(IllegalArgumentException.class, () -> aforo.meter("api.call", null, null));
            assertThrows(IllegalArgumentException.class, () -> aforo.meter("api.call", "cust-1", Map.of("x", Double.NaN)));
            assertThrows(IllegalArgumentException.class, () -> aforo.meter("api.call", "cust-1", Map.of("pad", "x".repeat(1 << 20))));
            assertThrows(IllegalArgumentException.class, () -> aforo.meter("api.call", "cust-1", Map.of("x", new Object())));
        }
        assertEquals("{\"amount\":\"0.1000000000000000055511151231257827\"}",
                Json.encode(Map.of("amount", new BigDecimal("0.1000000000000000055511151231257827")))); // exact
    }

    @Test
    void backoffIsJitteredExponentialAndHonoursRetryAfter() {
        long ms = 1_000_000;
        assertEquals(200 * ms, Outbound.backoffNanos(0, 200 * ms, 30_000 * ms, -1, () -> 1.0));
        assertEquals(800 * ms, Outbound.backoffNanos(3, 200 * ms, 30_000 * ms, -1, () -> 0.5));
        assertEquals(30_000 * ms, Outbound.backoffNanos(20, 200 * ms, 30_000 * ms, -1, () -> 1.0));
        assertEquals(7_000 * ms, Outbound.backoffNanos(0, 200 * ms, 30_000 * ms, 7_000 * ms, () -> 1.0));
        assertEquals(3_000 * ms, Outbound.retryAfterNanos("3"));
        assertEquals(-1, Outbound.retryAfterNanos("soon"));
        assertEquals(0, Outbound.retryAfterNanos("Wed, 21 Oct 2015 07:28:00 GMT"));
    }

    @Test
    void meteredCallsAndScopes() throws Exception {
        String source = Harness.newSource();
        try (Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.key).source(source).build()) {
            List<Integer> rows = Scope.with("cust-2", "nightly",
                    () -> aforo.metered("report.generate", null, () -> List.of(1, 2, 3), List::size));
            assertEquals(3, rows.size());
            assertThrows(IOException.class, () -> aforo.metered("report.fail", "cust-3", () -> {
                throw new IOException("disk full");
            }, null));
            aforo.metered("report.generate", null, () -> 1, null); // no customer: counted, not sent
            assertEquals(1, aforo.stats().unattributed());
        }
        Map<String, Map<String, Object>> events = new HashMap<>();
        for (Map<String, Object> e : h.sent(source)) events.put((String) e.get("type"), e);
        assertEquals(2, events.size());
        Map<String, Object> ok = events.get("report.generate");
        Map<String, Object> failed = events.get("report.fail");
        assertEquals(List.of("cust-2", "ok", new BigDecimal(3)), List.of(ok.get("subject"), data(ok).get("outcome"), data(ok).get("quantity")));
        assertEquals(List.of("cust-3", "error", "IOException"),
                List.of(failed.get("subject"), data(failed).get("outcome"), data(failed).get("error")));
    }

    @Test
    void filterMetersTheJdkHttpServer() throws Exception {
        String source = Harness.newSource();
        Aforo aforo = Aforo.builder().endpoint(h.proxy).apiKey(h.aiKey).source(source).linger(Duration.ofHours(1)).build();
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        AforoFilter filter = new AforoFilter(aforo);
        server.createContext("/items/", ex -> {
            ex.sendResponseHeaders(200, -1);
            ex.close();
        }).getFilters().add(filter);
        server.createContext("/orders", ex -> {
            Scope.setCustomer("ai-cust-2"); // learnt inside the request
            ex.sendResponseHeaders(201, -1);
            ex.close();
        }).getFilters().add(filter);
        server.createContext("/boom", ex -> {
            throw new IllegalStateException("bug");
        }).getFilters().add(filter);
        server.createContext("/healthz", ex -> {
            ex.sendResponseHeaders(200, -1);
            ex.close();
        }).getFilters().add(filter);
        server.start();
        String base = "http://127.0.0.1:" + server.getAddress().getPort();
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        List<Integer> statuses = new ArrayList<>();
        for (String[] call : new String[][] {{"GET", "/items/42", "ai-cust-1"}, {"POST", "/orders", ""},
                {"GET", "/boom", "ai-cust-1"}, {"GET", "/healthz", "ai-cust-1"}, {"GET", "/items/7", ""}}) {
            HttpRequest.Builder req = HttpRequest.newBuilder(URI.create(base + call[1])).method(call[0], HttpRequest.BodyPublishers.noBody());
            if (!call[2].isEmpty()) req.header("X-Customer-Id", call[2]);
            try {
                statuses.add(client.send(req.build(), HttpResponse.BodyHandlers.discarding()).statusCode());
            } catch (IOException dropped) {
                statuses.add(0); // the throwing handler: the server drops the connection
            }
        }
        server.stop(0);
        assertEquals(List.of(200, 201, 0, 200, 200), statuses);
        aforo.flush(Duration.ofSeconds(10));
        aforo.close();
        assertEquals(1, aforo.stats().unattributed()); // nobody to bill: counted
        Map<String, Map<String, Object>> routes = new HashMap<>();
        for (Map<String, Object> e : h.sent(source)) routes.put(data(e).get("method") + " " + data(e).get("route"), e);
        assertEquals(3, routes.size(), routes.toString());
        assertEquals("ai-cust-2", routes.get("POST /orders").get("subject"));
        assertEquals(new BigDecimal(201), data(routes.get("POST /orders")).get("status"));
        assertEquals(new BigDecimal(500), data(routes.get("GET /boom")).get("status"));
        Map<String, Object> item = routes.get("GET /items/");
        assertEquals(List.of("route", "method", "status", "latency_ms"), new ArrayList<>(data(item).keySet()));
        Map<String, Object> r = record(h.ledger(h.aiKey, source, (String) item.get("id"), 1), 0);
        assertEquals(List.of("accepted", "sdk", "0.001"), List.of(r.get("status"), r.get("tier"), money(r.get("revenue"))));
    }
}
