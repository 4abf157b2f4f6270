// Payment-API stub in Go: net/http's ServeMux and encoding/json into a struct, as a Go acquirer decodes.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"regexp"
	"sync"
)

const stepUpRequired = `{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"},"payment_request":{"payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_reference":"acquiring-partner-request-reference-1234","amount":11800,"currency":"USD","state":"SUBMITTED","expires_at":"2025-02-26T17:25:34.534721775Z","state_context":{"customer_interaction":{"method":"HANDOVER","payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_url":"https://pay.klarna.com/eu/requests/552603c0-fe8b-4ab1-aacb-41d55fafbdb4/start"}}}}`

type CustomerInteractionConfig struct {
	Method       string `json:"method"`
	ReturnURL    string `json:"return_url"`
	AppReturnURL string `json:"app_return_url"`
}

type StepUpConfig struct {
	PaymentRequestReference   string                     `json:"payment_request_reference"`
	CustomerInteractionConfig *CustomerInteractionConfig `json:"customer_interaction_config"`
}

type Payment struct {
	PaymentMethod             interface{}     `json:"payment_method"`
	ReturnURL                 string          `json:"return_url"`
	KlarnaReturnURL           string          `json:"klarna_return_url"`
	AppReturnURL              string          `json:"app_return_url"`
	KlarnaAppReturnURL        string          `json:"klarna_app_return_url"`
	StepUpConfig              *StepUpConfig   `json:"step_up_config"`
	RequestPaymentTransaction json.RawMessage `json:"request_payment_transaction"`
}

type Record struct {
	Method        string            `json:"method"`
	Path          string            `json:"path"`
	Route         string            `json:"route"`
	PaymentMethod interface{}       `json:"payment_method"`
	WebURLs       map[string]string `json:"web_urls"`
	AppURLs       map[string]string `json:"app_urls"`
	Partner       []string          `json:"partner"`
	Verified      []string          `json:"verified"`
	DecodeError   string            `json:"decode_error,omitempty"`
}

var (
	mu        sync.Mutex
	records   = []Record{}
	authorize = regexp.MustCompile(`^/v2/accounts/[^/]+/payment/authorize$`)
)

// The fields given (by the name the layer writes them under) that are not empty.
func present(fields map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range fields {
		if v != "" {
			out[k] = v
		}
	}
	return out
}

func record(r *http.Request, route string) *Record {
	return &Record{Method: r.Method, Path: r.URL.Path, Route: route, WebURLs: map[string]string{}, AppURLs: map[string]string{},
		Partner: r.Header.Values("X-Partner-Id"), Verified: r.Header.Values("X-Klarna-Stepup-Verified")}
}

func keep(rec *Record) {
	mu.Lock()
	defer mu.Unlock()
	records = append(records, *rec)
}

func payment(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	rec := record(r, "payment")
	var p Payment
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
		rec.DecodeError = err.Error()
		keep(rec)
		http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
		return
	}
	rec.PaymentMethod = p.PaymentMethod
	c := &CustomerInteractionConfig{}
	if p.StepUpConfig != nil && p.StepUpConfig.CustomerInteractionConfig != nil {
		c = p.StepUpConfig.CustomerInteractionConfig
	}
	rec.WebURLs = present(map[string]string{"return_url": p.ReturnURL, "klarna_return_url": p.KlarnaReturnURL,
		"step_up_config.customer_interaction_config.return_url": c.ReturnURL})
	rec.AppURLs = present(map[string]string{"app_return_url": p.AppReturnURL, "klarna_app_return_url": p.KlarnaAppReturnURL,
		"step_up_config.customer_interaction_config.app_return_url": c.AppReturnURL})
	keep(rec)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, stepUpRequired)
}

func main() {
	port := os.Getenv("PORT")
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/payments", payment)
	mux.HandleFunc("/v1/payments", payment)
	mux.HandleFunc("/v2/accounts/", func(w http.ResponseWriter, r *http.Request) {
		if authorize.MatchString(r.URL.Path) {
			payment(w, r)
		} else {
			http.NotFound(w, r)
		}
	})
	mux.HandleFunc("/internal/klarna/webhooks", func(w http.ResponseWriter, r *http.Request) {
		keep(record(r, "relay"))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"received":true}`)
	})
	mux.HandleFunc("/__decoded", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == http.MethodDelete {
			records = []Record{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(records)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("listening on", ln.Addr()) // anything else: the mux's 404
	log.Fatal(http.Serve(ln, mux))
}
