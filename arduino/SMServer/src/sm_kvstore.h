/*
 * sm_kvstore.h - a small key-value store on top of the EEPROM byte array.
 *
 * Layout, starting at `offset`:
 *   "SMKV" magic (4 bytes) | format version (1) | payload length (2, LE)
 *   | CRC-32 of the payload (4, LE) | payload
 * and the payload is a list of records:
 *   key length (1) | key | value length (2, LE) | value
 *
 * A blank EEPROM (all 0xFF or 0x00), one written by another sketch, or one
 * whose checksum does not match reads as empty, so the device never sends a
 * garbage token. Writes rewrite the area in place and commit at most once per
 * call, and only when a byte actually changed: on the ESP8266 each commit
 * erases and rewrites a 4 KB flash sector, which wears out after some 10^4 to
 * 10^5 cycles.
 */
#ifndef SMSERVER_KVSTORE_H
#define SMSERVER_KVSTORE_H

#include "sm_interfaces.h"

namespace smserver {

class EepromKeyValueStore : public KeyValueStore {
 public:
  /** Uses bytes [offset, offset + length) of `storage` (clipped to its size). */
  EepromKeyValueStore(ByteStorage& storage, size_t offset, size_t length);

  bool get(const char* key, char* out, size_t outSize);
  bool putAll(const KeyValue* pairs, size_t count);
  bool remove(const char* key);
  /** Formats the area as an empty store. */
  bool clear();
  /** True when the area holds a well-formed store (magic, version, checksum). */
  bool valid();

  static const size_t kHeaderSize = 11;

 private:
  // The steps below expect the storage to be open.
  bool validNow();
  bool fits(const KeyValue* pairs, size_t count);
  bool write(const char* key, const char* value);
  bool finish(bool ok);
  size_t usable();
  size_t payloadLength();
  // Finds `key`; sets the record's start and total size. False when absent.
  bool find(const char* key, size_t* recordStart, size_t* recordSize);
  uint32_t payloadCrc(size_t length);
  void writeHeader(size_t length);
  uint8_t at(size_t i) { return storage_.read(offset_ + i); }
  void set(size_t i, uint8_t v);

  ByteStorage& storage_;
  size_t offset_;
  size_t length_;
  bool dirty_;
};

/** CRC-32 (IEEE 802.3, the zlib one), updated byte by byte. */
uint32_t crc32Update(uint32_t crc, uint8_t byte);

}  // namespace smserver

#endif  // SMSERVER_KVSTORE_H
