package io.aforo.sdk;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.math.BigDecimal;
import java.net.ServerSocket;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.stream.Collectors;

/**
 * The SDK's tests run against a real Aforo (`aforo serve` + the metering flow), a fault proxy in
 * front of it and an LLM stand-in, started by Aforo's own suite (tests/test_sdks.py, `make test`),
 * which passes their addresses in AFORO_TEST_*.
 */
@SuppressWarnings("unchecked")
final class Harness {
    final String endpoint = env("AFORO_TEST_ENDPOINT");
    final String key = env("AFORO_TEST_API_KEY"); // tenant acme
    final String aiKey = env("AFORO_TEST_AI_API_KEY"); // tenant nimbus: per-unit and per-token prices
    final String proxy = env("AFORO_TEST_PROXY");
    private final HttpClient http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();

    private static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            fail(name + " is not set: run these tests through Aforo's suite (`make test`, or "
                    + "`pytest tests/test_sdks.py -k java` from the repository root)");
        }
        return v;
    }

    /** Each test its own event source, so the proxy log and the ledger tell its events apart. */
    static String newSource() {
        return "sdk/java-test/" + UUID.randomUUID().toString().substring(0, 10);
    }

    static String closedPort() throws IOException {
        try (ServerSocket s = new ServerSocket(0)) {
            return "http://127.0.0.1:" + s.getLocalPort();
        }
    }

    private String send(HttpRequest.Builder request) throws Exception {
        return http.send(request.build(), HttpResponse.BodyHandlers.ofString()).body();
    }

    void faults(String retryAfter, String... faults) throws Exception {
        String list = Arrays.stream(faults).map(f -> "\"" + f + "\"").collect(Collectors.joining(","));
        send(HttpRequest.newBuilder(URI.create(proxy + "/_faults"))
                .POST(HttpRequest.BodyPublishers.ofString("{\"faults\":[" + list + "],\"retry_after\":\"" + retryAfter + "\"}")));
    }

    /** Every attempt that reached the proxy carrying source's events. */
    List<Map<String, Object>> requests(String source) throws Exception {
        List<Object> log = (List<Object>) MiniJson.parse(send(HttpRequest.newBuilder(URI.create(proxy + "/_log"))));
        List<Map<String, Object>> mine = new ArrayList<>();
        for (Object o : log) {
            Map<String, Object> r = (Map<String, Object>) o;
            if (((List<Object>) r.get("events")).stream().anyMatch(e -> source.equals(((Map<String, Object>) e).get("source")))) {
                mine.add(r);
            }
        }
        return mine;
    }

    static List<Integer> sizes(List<Map<String, Object>> requests) {
        return requests.stream().map(r -> ((List<Object>) r.get("events")).size()).collect(Collectors.toList());
    }

    /** source's events as the proxy saw them, first copy of each id, in order. */
    List<Map<String, Object>> sent(String source) throws Exception {
        Map<Object, Map<String, Object>> seen = new LinkedHashMap<>();
        for (Map<String, Object> r : requests(source)) {
            for (Object o : (List<Object>) r.get("events")) {
                Map<String, Object> e = (Map<String, Object>) o;
                if (source.equals(e.get("source"))) seen.putIfAbsent(e.get("id"), e);
            }
        }
        return new ArrayList<>(seen.values());
    }

    List<Map<String, Object>> waitSent(String source, int n) throws Exception {
        long deadline = System.currentTimeMillis() + 30_000;
        List<Map<String, Object>> events = sent(source);
        while (events.size() < n && System.currentTimeMillis() < deadline) {
            Thread.sleep(50);
            events = sent(source);
        }
        return events;
    }

    /** The event's status and records from Aforo's ledger (GET /v1/events/...), once it has at
     * least n records (a retry's duplicate is processed after the original). */
    Map<String, Object> ledger(String apiKey, String source, String id, int n) throws Exception {
        String path = Arrays.stream(source.split("/")).map(p -> URLEncoder.encode(p, StandardCharsets.UTF_8))
                .collect(Collectors.joining("/"));
        URI uri = URI.create(endpoint + "/v1/events/" + path + "/" + URLEncoder.encode(id, StandardCharsets.UTF_8));
        long deadline = System.currentTimeMillis() + 90_000;
        while (true) {
            HttpResponse<String> r = http.send(HttpRequest.newBuilder(uri).header("Authorization", "Bearer " + apiKey).build(),
                    HttpResponse.BodyHandlers.ofString());
            if (r.statusCode() == 200) {
                Map<String, Object> e = (Map<String, Object>) MiniJson.parse(r.body());
                if (((List<Object>) e.get("records")).size() >= n) return e;
            } else if (r.statusCode() != 404) {
                fail(uri + ": " + r.statusCode() + " " + r.body());
            }
            if (System.currentTimeMillis() > deadline) fail(uri + ": not in the ledger: " + r.body());
            Thread.sleep(200);
        }
    }

    static Map<String, Object> record(Map<String, Object> event, int i) {
        return (Map<String, Object>) ((List<Object>) event.get("records")).get(i);
    }

    /** An exact decimal without trailing zeros ("0.0060000" -> "0.006"), null as is. */
    static String money(Object value) {
        return value == null ? null : new BigDecimal((String) value).stripTrailingZeros().toPlainString();
    }
}
