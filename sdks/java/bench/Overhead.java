import com.sun.net.httpserver.HttpServer;
import io.aforo.sdk.Aforo;
import io.aforo.sdk.Scope;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.Comparator;
import java.util.Map;
import java.util.concurrent.Executors;
import java.util.function.ObjIntConsumer;

/**
 * Overhead per metered call: how long meter() (and a metered() call) holds up the caller, p50 and
 * p99, with batches being delivered in the background; in memory and with the spool.
 *
 * <pre>./build.sh bench   (or: java -cp build/classes:build/bench Overhead [calls] [endpoint apiKey])</pre>
 *
 * Without an endpoint the events go to a local HTTP sink that answers 202 at once, so the figures
 * are the SDK's own cost, not Aforo's. Not a test: figures, no thresholds.
 */
public final class Overhead {
    public static void main(String[] args) throws Exception {
        int calls = args.length > 0 ? Integer.parseInt(args[0]) : 200_000;
        String endpoint = args.length > 1 ? args[1] : null;
        String apiKey = args.length > 2 ? args[2] : "afk_bench_bench";
        HttpServer sink = null;
        if (endpoint == null) {
            sink = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
            sink.createContext("/", ex -> {
                ex.getRequestBody().readAllBytes();
                ex.sendResponseHeaders(202, -1);
                ex.close();
            });
            sink.setExecutor(Executors.newFixedThreadPool(2));
            sink.start();
            endpoint = "http://127.0.0.1:" + sink.getAddress().getPort();
        }
        java.util.logging.Logger.getLogger("io.aforo.sdk").setLevel(java.util.logging.Level.OFF);
        ObjIntConsumer<Aforo> meter = (aforo, i) ->
                aforo.meter("api.call", "cust-1", Map.of("route", "/v1/search", "status", 200, "n", i));
        ObjIntConsumer<Aforo> metered = (aforo, i) -> {
            try {
                Scope.with("cust-1", null, () -> aforo.metered("report.run", null, () -> i, null));
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        };
        StringBuilder json = new StringBuilder("{\"sdk\":\"java\",\"java\":\"" + System.getProperty("java.version")
                + "\",\"calls\":" + calls + ",\"results\":[");
        Object[][] modes = {{"meter, memory", false, meter}, {"meter, spool", true, meter}, {"metered() call, memory", false, metered}};
        for (int m = 0; m < modes.length; m++) {
            String mode = (String) modes[m][0];
            @SuppressWarnings("unchecked") ObjIntConsumer<Aforo> fn = (ObjIntConsumer<Aforo>) modes[m][2];
            Path spool = (Boolean) modes[m][1] ? Files.createTempDirectory("aforo-bench-") : null;
            Aforo aforo = Aforo.builder().endpoint(endpoint).apiKey(apiKey).maxQueue(10_000_000).spoolDir(spool)
                    .spoolMaxBytes(8L << 30).build();
            for (int i = 0; i < calls / 10; i++) fn.accept(aforo, i); // warm up (and JIT)
            long[] samples = new long[calls];
            long started = System.nanoTime();
            for (int i = 0; i < calls; i++) {
                long t = System.nanoTime();
                fn.accept(aforo, i);
                samples[i] = System.nanoTime() - t;
            }
            double elapsed = (System.nanoTime() - started) / 1e9;
            boolean flushed = aforo.flush(Duration.ofMinutes(2));
            aforo.close();
            Arrays.sort(samples);
            double p50 = samples[(int) (0.5 * (calls - 1))] / 1000.0;
            double p99 = samples[(int) (0.99 * (calls - 1))] / 1000.0;
            double p999 = samples[(int) (0.999 * (calls - 1))] / 1000.0;
            System.out.printf("%-24s p50 %7.2f us  p99 %7.2f us  p99.9 %7.2f us  %10.0f calls/s  delivered %d  dropped %d%n",
                    mode, p50, p99, p999, calls / elapsed, aforo.stats().delivered(), aforo.stats().dropped());
            json.append(m > 0 ? "," : "").append(String.format(
                    "{\"mode\":\"%s\",\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"calls_per_s\":%.0f,\"delivered\":%d,\"dropped\":%d,\"flushed\":%b}",
                    mode, p50, p99, p999, calls / elapsed, aforo.stats().delivered(), aforo.stats().dropped(), flushed));
            if (spool != null) {
                try (var files = Files.walk(spool)) {
                    files.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
                }
            }
        }
        System.out.println(json.append("]}"));
        if (sink != null) sink.stop(0);
        System.exit(0);
    }
}
