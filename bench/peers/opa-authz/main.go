// Command opa-authz is the benchmark's stand-in for opa-envoy-plugin, used when that module
// cannot be installed (the Go module proxy here refuses github.com/open-policy-agent/opa-envoy-plugin).
//
// It has opa-envoy-plugin's design and does its per-request work: an Envoy ext_authz v3 gRPC
// server that turns the CheckRequest into opa-envoy-plugin's input document (protojson of the
// request plus parsed_path, parsed_query, parsed_body), evaluates one prepared Rego query
// in-process with OPA's Go library, and maps the decision (a bool, or an object with allowed,
// headers, request_headers_to_remove, response_headers_to_add, http_status, body) back onto a
// CheckResponse. No decision logging, no bundles, no plugins: the benchmark needs none.
//
//	opa-authz -addr 127.0.0.1:9192 -query data.envoy.authz.decision POLICY_DIR [DATA_DIR ...]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	auth "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
)

type server struct {
	auth.UnimplementedAuthorizationServer
	query rego.PreparedEvalQuery
}

// protojson with JSON (camelCase) names, as opa-envoy-plugin builds its input.
var marshal = protojson.MarshalOptions{}

// requestToInput builds opa-envoy-plugin's input document (envoyauth.RequestToInput).
func requestToInput(req *auth.CheckRequest) (map[string]any, error) {
	raw, err := marshal.Marshal(req)
	if err != nil {
		return nil, err
	}
	var input map[string]any
	if err := json.Unmarshal(raw, &input); err != nil {
		return nil, err
	}
	http := req.GetAttributes().GetRequest().GetHttp()
	path, query, _ := strings.Cut(http.GetPath(), "?")
	segments := []any{}
	for _, s := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		segments = append(segments, s)
	}
	input["parsed_path"] = segments
	parsedQuery := map[string]any{}
	if values, err := url.ParseQuery(query); err == nil {
		for k, v := range values {
			list := make([]any, len(v))
			for i := range v {
				list[i] = v[i]
			}
			parsedQuery[k] = list
		}
	}
	input["parsed_query"] = parsedQuery
	body := http.GetRawBody()
	if len(body) == 0 {
		body = []byte(http.GetBody())
	}
	parsedBody := any(nil)
	if len(body) > 0 && strings.Contains(http.GetHeaders()["content-type"], "json") {
		_ = json.Unmarshal(body, &parsedBody) // opa-envoy-plugin leaves it null when unparsable
	}
	input["parsed_body"] = parsedBody
	input["truncated_body"] = false
	return input, nil
}

func headerOptions(v any) []*core.HeaderValueOption {
	m, _ := v.(map[string]any)
	out := make([]*core.HeaderValueOption, 0, len(m))
	for k, val := range m {
		out = append(out, &core.HeaderValueOption{
			Header:       &core.HeaderValue{Key: k, Value: fmt.Sprint(val)},
			AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	return out
}

func strings_(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, s := range list {
		out = append(out, fmt.Sprint(s))
	}
	return out
}

func denied(code int, body string, headers []*core.HeaderValueOption) *auth.CheckResponse {
	return &auth.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &auth.CheckResponse_DeniedResponse{DeniedResponse: &auth.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(code)},
			Headers: headers,
			Body:    body,
		}},
	}
}

func (s *server) Check(ctx context.Context, req *auth.CheckRequest) (*auth.CheckResponse, error) {
	input, err := requestToInput(req)
	if err != nil {
		return nil, err
	}
	value, err := ast.InterfaceToValue(input)
	if err != nil {
		return nil, err
	}
	rs, err := s.query.Eval(ctx, rego.EvalParsedInput(value))
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return denied(403, "", nil), nil // undefined decision: deny, like opa-envoy-plugin
	}
	switch d := rs[0].Expressions[0].Value.(type) {
	case bool:
		if d {
			return &auth.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}}, nil
		}
		return denied(403, "", nil), nil
	case map[string]any:
		if allowed, _ := d["allowed"].(bool); allowed {
			return &auth.CheckResponse{
				Status: &rpcstatus.Status{Code: int32(codes.OK)},
				HttpResponse: &auth.CheckResponse_OkResponse{OkResponse: &auth.OkHttpResponse{
					Headers:              headerOptions(d["headers"]),
					HeadersToRemove:      strings_(d["request_headers_to_remove"]),
					ResponseHeadersToAdd: headerOptions(d["response_headers_to_add"]),
				}},
			}, nil
		}
		code := 403
		if n, ok := d["http_status"].(json.Number); ok {
			if i, err := n.Int64(); err == nil {
				code = int(i)
			}
		}
		body, _ := d["body"].(string)
		return denied(code, body, headerOptions(d["headers"])), nil
	default:
		return nil, fmt.Errorf("decision has type %T, want bool or object", d)
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9192", "gRPC listen address")
	query := flag.String("query", "data.envoy.authz.allow", "Rego query (opa-envoy-plugin's `path`)")
	flag.Parse()
	ctx := context.Background()

	skipTests := func(_ string, info fs.FileInfo, _ int) bool {
		return !info.IsDir() && (strings.HasSuffix(info.Name(), "_test.rego") ||
			strings.HasSuffix(info.Name(), ".md"))
	}
	loaded, err := loader.NewFileLoader().Filtered(flag.Args(), skipTests)
	if err != nil {
		log.Fatalf("load: %v", err)
	}
	store, err := loaded.Store()
	if err != nil {
		log.Fatalf("store: %v", err)
	}
	opts := []func(*rego.Rego){rego.Query(*query), rego.Store(store)}
	for _, m := range loaded.ParsedModules() {
		opts = append(opts, rego.ParsedModule(m))
	}
	prepared, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		log.Fatalf("prepare %s: %v", *query, err)
	}

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	auth.RegisterAuthorizationServer(srv, &server{query: prepared})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-stop; srv.GracefulStop() }()
	log.Printf("opa-authz listening on %s, query %s", *addr, *query)
	if err := srv.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
