/*
 * sm_kvstore.cpp - the EEPROM key-value store (format in sm_kvstore.h).
 */
#include "sm_kvstore.h"

#include <string.h>

namespace smserver {
namespace {

const uint8_t kMagic[4] = {'S', 'M', 'K', 'V'};
const uint8_t kVersion = 1;

}  // namespace

uint32_t crc32Update(uint32_t crc, uint8_t byte) {
  crc ^= byte;
  for (int bit = 0; bit < 8; ++bit) {
    crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc;
}

EepromKeyValueStore::EepromKeyValueStore(ByteStorage& storage, size_t offset,
                                         size_t length)
    : storage_(storage), offset_(offset), length_(length), dirty_(false) {}

size_t EepromKeyValueStore::usable() {
  size_t total = storage_.size();
  if (offset_ >= total) return 0;
  return (total - offset_ < length_) ? total - offset_ : length_;
}

void EepromKeyValueStore::set(size_t i, uint8_t v) {
  if (at(i) == v) return;  // an unchanged byte never makes a commit necessary
  storage_.write(offset_ + i, v);
  dirty_ = true;
}

uint32_t EepromKeyValueStore::payloadCrc(size_t length) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < length; ++i) crc = crc32Update(crc, at(kHeaderSize + i));
  return crc ^ 0xFFFFFFFFu;
}

size_t EepromKeyValueStore::payloadLength() {
  return static_cast<size_t>(at(5)) | (static_cast<size_t>(at(6)) << 8);
}

bool EepromKeyValueStore::valid() {
  if (!storage_.open()) return false;
  bool ok = validNow();
  storage_.close();
  return ok;
}

bool EepromKeyValueStore::validNow() {
  size_t area = usable();
  if (area < kHeaderSize) return false;
  for (size_t i = 0; i < 4; ++i) {
    if (at(i) != kMagic[i]) return false;
  }
  if (at(4) != kVersion) return false;
  size_t length = payloadLength();
  if (length > area - kHeaderSize) return false;
  uint32_t stored = 0;
  for (int i = 3; i >= 0; --i) stored = (stored << 8) | at(static_cast<size_t>(7 + i));
  if (stored != payloadCrc(length)) return false;
  // The records must tile the payload exactly.
  size_t pos = 0;
  while (pos < length) {
    size_t keyLength = at(kHeaderSize + pos);
    if (pos + 1 + keyLength + 2 > length) return false;
    size_t v = kHeaderSize + pos + 1 + keyLength;
    size_t valueLength = static_cast<size_t>(at(v)) | (static_cast<size_t>(at(v + 1)) << 8);
    pos += 1 + keyLength + 2 + valueLength;
  }
  return pos == length;
}

void EepromKeyValueStore::writeHeader(size_t length) {
  for (size_t i = 0; i < 4; ++i) set(i, kMagic[i]);
  set(4, kVersion);
  set(5, static_cast<uint8_t>(length & 0xFF));
  set(6, static_cast<uint8_t>(length >> 8));
  uint32_t crc = payloadCrc(length);
  for (size_t i = 0; i < 4; ++i) set(7 + i, static_cast<uint8_t>(crc >> (8 * i)));
}

bool EepromKeyValueStore::find(const char* key, size_t* recordStart, size_t* recordSize) {
  size_t keyLength = strlen(key);
  size_t length = payloadLength();
  size_t pos = 0;
  while (pos < length) {
    size_t base = kHeaderSize + pos;
    size_t thisKeyLength = at(base);
    size_t v = base + 1 + thisKeyLength;
    size_t valueLength = static_cast<size_t>(at(v)) | (static_cast<size_t>(at(v + 1)) << 8);
    size_t size = 1 + thisKeyLength + 2 + valueLength;
    if (thisKeyLength == keyLength) {
      bool same = true;
      for (size_t i = 0; i < keyLength && same; ++i) {
        same = at(base + 1 + i) == static_cast<uint8_t>(key[i]);
      }
      if (same) {
        *recordStart = pos;
        *recordSize = size;
        return true;
      }
    }
    pos += size;
  }
  return false;
}

bool EepromKeyValueStore::get(const char* key, char* out, size_t outSize) {
  if (key == NULL || out == NULL || outSize == 0) return false;
  out[0] = '\0';
  if (!storage_.open()) return false;
  bool found = false;
  size_t start, size;
  if (validNow() && find(key, &start, &size)) {
    size_t v = kHeaderSize + start + 1 + at(kHeaderSize + start);
    size_t valueLength = static_cast<size_t>(at(v)) | (static_cast<size_t>(at(v + 1)) << 8);
    if (valueLength + 1 <= outSize) {
      for (size_t i = 0; i < valueLength; ++i) out[i] = static_cast<char>(at(v + 2 + i));
      out[valueLength] = '\0';
      found = true;
    }
  }
  storage_.close();
  return found;
}

// Rewrites one record in the open storage (no commit). False when it cannot fit.
bool EepromKeyValueStore::write(const char* key, const char* value) {
  if (key == NULL || value == NULL) return false;
  size_t keyLength = strlen(key);
  size_t valueLength = strlen(value);
  if (keyLength == 0 || keyLength > 255 || valueLength > 0xFFFF) return false;
  size_t area = usable();
  if (area < kHeaderSize) return false;
  if (!validNow()) writeHeader(0);  // blank or foreign: format the area

  size_t start, size;
  size_t length = payloadLength();
  bool exists = find(key, &start, &size);
  if (exists && size == 1 + keyLength + 2 + valueLength) {
    size_t v = kHeaderSize + start + 1 + keyLength + 2;
    bool same = true;
    for (size_t i = 0; i < valueLength && same; ++i) {
      same = at(v + i) == static_cast<uint8_t>(value[i]);
    }
    if (same) return true;  // unchanged: nothing to write
  }
  size_t remaining = exists ? length - size : length;
  size_t newLength = remaining + 1 + keyLength + 2 + valueLength;
  if (newLength > area - kHeaderSize || newLength > 0xFFFF) return false;

  if (exists) {
    // Close the gap left by the old record, then append the new one.
    for (size_t i = start; i < remaining; ++i) {
      set(kHeaderSize + i, at(kHeaderSize + i + size));
    }
  }
  size_t pos = kHeaderSize + remaining;
  set(pos++, static_cast<uint8_t>(keyLength));
  for (size_t i = 0; i < keyLength; ++i) set(pos++, static_cast<uint8_t>(key[i]));
  set(pos++, static_cast<uint8_t>(valueLength & 0xFF));
  set(pos++, static_cast<uint8_t>(valueLength >> 8));
  for (size_t i = 0; i < valueLength; ++i) set(pos++, static_cast<uint8_t>(value[i]));
  writeHeader(newLength);
  return true;
}

// Commits what changed (if anything) and closes the storage.
bool EepromKeyValueStore::finish(bool ok) {
  if (dirty_) {
    ok = storage_.commit() && ok;
    dirty_ = false;
  }
  storage_.close();
  return ok;
}

bool EepromKeyValueStore::fits(const KeyValue* pairs, size_t count) {
  size_t area = usable();
  if (area < kHeaderSize) return false;
  bool formatted = validNow();
  size_t length = formatted ? payloadLength() : 0;
  for (size_t i = 0; i < count; ++i) {
    if (pairs[i].key == NULL || pairs[i].value == NULL) return false;
    size_t keyLength = strlen(pairs[i].key);
    size_t valueLength = strlen(pairs[i].value);
    if (keyLength == 0 || keyLength > 255 || valueLength > 0xFFFF) return false;
    for (size_t j = 0; j < i; ++j) {  // a repeated key replaces its earlier pair
      if (strcmp(pairs[j].key, pairs[i].key) == 0) return false;
    }
    size_t start, size;
    if (formatted && find(pairs[i].key, &start, &size)) length -= size;
    length += 1 + keyLength + 2 + valueLength;
  }
  return length <= area - kHeaderSize && length <= 0xFFFF;
}

bool EepromKeyValueStore::putAll(const KeyValue* pairs, size_t count) {
  if (pairs == NULL) return false;
  if (!storage_.open()) return false;
  dirty_ = false;
  // All or nothing: a call that cannot store every pair changes no byte.
  bool ok = fits(pairs, count);
  for (size_t i = 0; i < count && ok; ++i) ok = write(pairs[i].key, pairs[i].value);
  return finish(ok);
}

bool EepromKeyValueStore::remove(const char* key) {
  if (key == NULL) return true;
  if (!storage_.open()) return false;
  dirty_ = false;
  size_t start, size;
  if (validNow() && find(key, &start, &size)) {
    size_t length = payloadLength();
    for (size_t i = start; i + size < length; ++i) {
      set(kHeaderSize + i, at(kHeaderSize + i + size));
    }
    writeHeader(length - size);
  }
  return finish(true);  // nothing stored is nothing to remove
}

bool EepromKeyValueStore::clear() {
  if (!storage_.open()) return false;
  dirty_ = false;
  bool ok = usable() >= kHeaderSize;
  if (ok) writeHeader(0);
  return finish(ok);
}

}  // namespace smserver
