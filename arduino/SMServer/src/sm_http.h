/*
 * sm_http.h - the portable half of the library's HTTP/1.1 client: parsing
 * the server URL, writing the request head, and reading the answer with fixed
 * buffers. The ESP8266 adapter (sm_arduino.cpp) only moves bytes between these
 * and a socket, so everything that reads untrusted bytes is host-tested under
 * AddressSanitizer.
 *
 * The library asks two tiny JSON questions (/auth/devices/request and /mqtt),
 * so the reader keeps only what it needs: the status, Retry-After, and at most
 * bodySize-1 bytes of body. A longer body is not read further. It understands
 * Content-Length, chunked transfer coding and bodies that end with the
 * connection. Header lines are read through a fixed 128-byte window, and at
 * most 4 KB of header is accepted.
 */
#ifndef SMSERVER_HTTP_H
#define SMSERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "sm_interfaces.h"

namespace smserver {

const size_t kUrlHostSize = 128;

/** "http://host[:port][/base]" or "https://…"; host may be "[v6]". */
struct ServerUrl {
  bool tls;
  char host[kUrlHostSize];  // without brackets
  uint16_t port;            // 80 or 443 unless given
  const char* base;         // path prefix inside the parsed text, not NUL-terminated
  size_t baseLength;        // without a trailing '/'
};

/**
 * Parses a server URL. False for another scheme, user info, a query or
 * fragment, an empty or oversized host, or a bad port.
 */
bool parseServerUrl(const char* url, ServerUrl& out);

/**
 * Writes "GET <base><path> HTTP/1.1", Host, User-Agent, "Connection: close"
 * and the start of the Authorization header ("Authorization: Bearer ") into
 * `out`. The caller sends this, then the bearer, then kRequestEnd. Returns
 * the length, or 0 when it does not fit.
 */
size_t formatRequestHead(const ServerUrl& url, const char* path, char* out, size_t outSize);
extern const char kRequestEnd[];  // "\r\n\r\n"

/** A short English name for an HttpError ("TLS handshake failed", ...). */
const char* httpErrorName(int code);

/** Reads one HTTP/1.x answer, fed in pieces as the bytes arrive. */
class HttpResponseParser {
 public:
  HttpResponseParser(char* body, size_t bodySize);

  /** Takes received bytes; returns how many it used (fewer once done()). */
  size_t feed(const char* data, size_t length);
  /** The peer closed the connection: this ends a body delimited by the close. */
  void closed();

  /** Stop reading: complete, truncated or failed. */
  bool done() const { return state_ == kDone || state_ == kFailed; }
  /** Not a well-formed HTTP/1.x answer (or it ended early). */
  bool failed() const { return state_ == kFailed; }
  /** The status code, or 0 before the status line. */
  int status() const { return status_; }
  /** Retry-After in delta-seconds, or -1 (absent, HTTP-date, malformed). */
  long retryAfterSeconds() const { return retryAfter_; }
  /** The body did not fit in bodySize-1 bytes: it was dropped, not read on. */
  bool truncated() const { return truncated_; }
  size_t bodyLength() const { return bodyLength_; }

  static const size_t kLineSize = 128;
  static const size_t kMaxHeaderBytes = 4096;

 private:
  enum State {
    kStatusLine,
    kHeaders,
    kBodyLength,
    kBodyUntilClose,
    kChunkSize,
    kChunkData,
    kChunkDataEnd,
    kTrailers,
    kDone,
    kFailed
  };

  bool lineByte(char c);  // true when a whole line is in line_
  void onLine();
  void onStatusLine();
  void onHeaderLine();
  void onHeadersEnd();
  void onChunkSizeLine();
  void bodyBytes(const char* data, size_t length);
  void fail() { state_ = kFailed; }
  void finish() { state_ = kDone; }

  char* body_;
  size_t bodySize_;
  size_t bodyLength_;
  State state_;
  int status_;
  long retryAfter_;
  bool truncated_;
  bool chunked_;
  bool haveLength_;
  uint32_t contentLength_;
  uint32_t remaining_;  // of the Content-Length body, or of the current chunk
  size_t headerBytes_;
  char line_[kLineSize];
  size_t lineLength_;
  bool lineOverflow_;
};

}  // namespace smserver

#endif  // SMSERVER_HTTP_H
