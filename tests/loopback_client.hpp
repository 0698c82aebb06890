#pragma once
// A TCP client connection to 127.0.0.1:port from a chosen loopback source address (on Linux any
// 127.x.y.z reaches loopback, and each is a distinct client address for the server): the per-address
// limits of the cloud's port and of the HTTP API are tested with it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

#include "tests/loopback.hpp"

namespace ce::test {

// The connected socket, or -1.
inline int connect_from(const char* source, uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in local{};
  local.sin_family = AF_INET;
  inet_pton(AF_INET, source, &local.sin_addr);
  // The port is picked at connect, per destination: thousands of connections a second from one
  // address would otherwise run out of ports picked at bind.
  const int yes = 1;
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &yes, sizeof yes);
  auto remote = loopback_address(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&remote), sizeof remote) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace ce::test
