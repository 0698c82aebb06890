#pragma once
// The node's HTTP API (cpp-httplib, its own worker threads), started when ce.http.port is set:
//   edge roles:  POST /v1/completions and /v1/chat/completions (OpenAI-compatible, server-sent
//                events with "stream"), POST /tokenize, /detokenize, GET /v1/models[/{id}],
//                GET / (the web page, web.hpp), GET /health, GET /metrics
//   cloud role:  GET /health, GET /metrics (contexts, evictions, memory, requests per client)
//   both:        CORS headers and preflights for ce.http.cors-origins (web_routes.hpp)
// Each completion is one generation session on the edge node (Node::generate) per choice, its n
// choices one after another in the request's one slot; at most
// ce.http.max-concurrent run at once, further ones wait in a FIFO of ce.http.queue places (at most
// ce.http.queue-timeout), beyond that 429 with Retry-After (wait_queue.hpp). Errors are OpenAI-style
// JSON bodies naming the field at fault; nothing a client sends can crash the node. The server
// (http_server.hpp) bounds each request's read time, caps connections per client address, gives
// every request an id (X-Request-Id) and writes an access log line per request.
#include <cstdint>
#include <memory>

namespace ce {

class Node;

class HttpApi {
 public:
  // Binds node.config().http_host:http_port (an ephemeral port when it is 0 or -1) and serves.
  // Throws std::runtime_error naming the address when it cannot bind.
  explicit HttpApi(Node& node);
  ~HttpApi();  // stops accepting, waits for running requests
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  uint16_t port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ce
