// Payment-API stub on the JDK's HttpServer with Jackson data binding, configured as Spring Boot configures its ObjectMapper.
import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.Executors;
import java.util.regex.Pattern;

public class Stub {
    static final String STEP_UP_REQUIRED = "{\"payment_transaction_response\":{\"result\":\"STEP_UP_REQUIRED\"},\"payment_request\":{\"payment_request_id\":\"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4\",\"payment_request_reference\":\"acquiring-partner-request-reference-1234\",\"amount\":11800,\"currency\":\"USD\",\"state\":\"SUBMITTED\",\"expires_at\":\"2025-02-26T17:25:34.534721775Z\",\"state_context\":{\"customer_interaction\":{\"method\":\"HANDOVER\",\"payment_request_id\":\"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4\",\"payment_request_url\":\"https://pay.klarna.com/eu/requests/552603c0-fe8b-4ab1-aacb-41d55fafbdb4/start\"}}}}";
    static final Pattern PAYMENT = Pattern.compile("/payments|/v1/payments|/v2/accounts/[^/]+/payment/authorize");
    // Spring Boot's Jackson2ObjectMapperBuilder turns FAIL_ON_UNKNOWN_PROPERTIES off; all else is Jackson's default.
    static final ObjectMapper MAPPER = new ObjectMapper().configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
    static final List<Map<String, Object>> RECORDS = Collections.synchronizedList(new ArrayList<>());

    public static class CustomerInteractionConfig {
        @JsonProperty("method") public String method;
        @JsonProperty("return_url") public String returnUrl;
        @JsonProperty("app_return_url") public String appReturnUrl;
    }

    public static class StepUpConfig {
        @JsonProperty("payment_request_reference") public String paymentRequestReference;
        @JsonProperty("customer_interaction_config") public CustomerInteractionConfig customerInteractionConfig;
    }

    public static class Payment {
        @JsonProperty("payment_method") public Object paymentMethod;
        @JsonProperty("return_url") public String returnUrl;
        @JsonProperty("klarna_return_url") public String klarnaReturnUrl;
        @JsonProperty("app_return_url") public String appReturnUrl;
        @JsonProperty("klarna_app_return_url") public String klarnaAppReturnUrl;
        @JsonProperty("step_up_config") public StepUpConfig stepUpConfig;
        @JsonProperty("request_payment_transaction") public Object requestPaymentTransaction;
    }

    /** The (name, value) pairs given whose value is not empty. */
    static Map<String, String> present(String... namesAndValues) {
        Map<String, String> out = new LinkedHashMap<>();
        for (int i = 0; i < namesAndValues.length; i += 2) {
            String v = namesAndValues[i + 1];
            if (v != null && !v.isEmpty()) out.put(namesAndValues[i], v);
        }
        return out;
    }

    static Map<String, Object> record(HttpExchange ex, String path, String route) {
        Map<String, Object> rec = new LinkedHashMap<>();
        rec.put("method", ex.getRequestMethod());
        rec.put("path", path);
        rec.put("route", route);
        rec.put("payment_method", null);
        rec.put("web_urls", Map.of());
        rec.put("app_urls", Map.of());
        rec.put("partner", ex.getRequestHeaders().getOrDefault("X-Partner-Id", List.of()));
        rec.put("verified", ex.getRequestHeaders().getOrDefault("X-Klarna-Stepup-Verified", List.of()));
        return rec;
    }

    static void send(HttpExchange ex, int status, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(status, bytes.length);
        ex.getResponseBody().write(bytes);
        ex.close();
    }

    static void handle(HttpExchange ex) throws IOException {
        // Spring's UrlPathHelper: the decoded path, ";..." path parameters removed.
        String path = ex.getRequestURI().getPath().replaceAll(";[^/]*", "");
        String method = ex.getRequestMethod();
        if (path.equals("/__decoded")) {
            if (method.equals("DELETE")) RECORDS.clear();
            synchronized (RECORDS) { send(ex, 200, MAPPER.writeValueAsString(RECORDS)); }
        } else if (path.equals("/internal/klarna/webhooks")) {
            RECORDS.add(record(ex, path, "relay"));
            send(ex, 200, "{\"received\":true}");
        } else if (method.equals("POST") && PAYMENT.matcher(path).matches()) {
            Map<String, Object> rec = record(ex, path, "payment");
            Payment p;
            try {
                p = MAPPER.readValue(ex.getRequestBody(), Payment.class);
            } catch (IOException e) {
                rec.put("decode_error", e.getClass().getSimpleName());
                RECORDS.add(rec);
                send(ex, 400, "{\"error\":\"bad request\"}");
                return;
            }
            CustomerInteractionConfig cic = p.stepUpConfig != null && p.stepUpConfig.customerInteractionConfig != null
                ? p.stepUpConfig.customerInteractionConfig : new CustomerInteractionConfig();
            rec.put("payment_method", p.paymentMethod);
            rec.put("web_urls", present("return_url", p.returnUrl, "klarna_return_url", p.klarnaReturnUrl,
                "step_up_config.customer_interaction_config.return_url", cic.returnUrl));
            rec.put("app_urls", present("app_return_url", p.appReturnUrl, "klarna_app_return_url", p.klarnaAppReturnUrl,
                "step_up_config.customer_interaction_config.app_return_url", cic.appReturnUrl));
            RECORDS.add(rec);
            send(ex, 200, STEP_UP_REQUIRED);
        } else {
            send(ex, 404, "{\"error\":\"not found\"}");
        }
    }

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(args.length > 0 ? args[0] : System.getenv("PORT"));
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/", Stub::handle);
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("listening on 127.0.0.1:" + port);
    }
}
