-- RFC 9421 signing as opay/http/signatures.py sign() does it (Ed25519, Content-Digest
-- sha-512), through OpenSSL's libcrypto, which wrk itself links. For the requests that
-- name what an earlier answer returned, so cannot be signed before the run.
local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_md_ctx_st EVP_MD_CTX;
EVP_PKEY *EVP_PKEY_new_raw_private_key(int type, void *engine, const unsigned char *key, size_t length);
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_DigestSignInit(EVP_MD_CTX *ctx, void **pctx, const void *md, void *engine, EVP_PKEY *key);
int EVP_DigestSign(EVP_MD_CTX *ctx, unsigned char *signature, size_t *length, const unsigned char *data, size_t size);
unsigned char *SHA512(const unsigned char *data, size_t size, unsigned char *digest);
int EVP_EncodeBlock(unsigned char *out, const unsigned char *data, int size);
]]

local crypto = ffi.load("libcrypto.so.3")
local NID_ED25519 = 1087

local M = {}

local out64 = ffi.new("unsigned char[?]", 512)
local function base64(data, size)
  local n = crypto.EVP_EncodeBlock(out64, data, size)
  return ffi.string(out64, n)
end

local digest = ffi.new("unsigned char[64]")
function M.content_digest(body)
  crypto.SHA512(body, #body, digest)
  return "sha-512=:" .. base64(digest, 64) .. ":"
end

-- A signer for one client key: `hex` is the raw 32-byte Ed25519 private key.
function M.signer(hex, keyid)
  local raw = hex:gsub("..", function(byte) return string.char(tonumber(byte, 16)) end)
  local key = crypto.EVP_PKEY_new_raw_private_key(NID_ED25519, nil, raw, #raw)
  assert(key ~= nil, "not an Ed25519 private key")
  local signature = ffi.new("unsigned char[64]")
  local length = ffi.new("size_t[1]")

  local function sign(base)
    local ctx = crypto.EVP_MD_CTX_new()
    assert(crypto.EVP_DigestSignInit(ctx, nil, nil, nil, key) == 1)
    length[0] = 64
    local ok = crypto.EVP_DigestSign(ctx, signature, length, base, #base)
    crypto.EVP_MD_CTX_free(ctx)
    assert(ok == 1, "EVP_DigestSign failed")
    return base64(signature, tonumber(length[0]))
  end

  -- The raw HTTP/1.1 request: `url` absolute (its origin is the @target-uri's), GNAP `token`,
  -- `body` a JSON string or nil.
  return function(method, url, token, body)
    local host, path = url:match("^https?://([^/]+)(.*)$")
    local auth = "GNAP " .. token
    local created = os.time()
    local base = '"@method": ' .. method .. '\n"@target-uri": ' .. url .. '\n"authorization": ' .. auth .. "\n"
    local params, headers
    if body then
      local digest_value = M.content_digest(body)
      params = '("@method" "@target-uri" "authorization" "content-digest" "content-length" "content-type");keyid="'
        .. keyid .. '";created=' .. created
      base = base .. '"content-digest": ' .. digest_value .. '\n"content-length": ' .. #body
        .. '\n"content-type": application/json\n'
      headers = "Content-Type: application/json\r\nContent-Digest: " .. digest_value .. "\r\nContent-Length: " .. #body .. "\r\n"
    else
      params = '("@method" "@target-uri" "authorization");keyid="' .. keyid .. '";created=' .. created
      headers = ""
    end
    base = base .. '"@signature-params": ' .. params
    return method .. " " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\nAuthorization: " .. auth .. "\r\n" .. headers
      .. "Signature-Input: sig1=" .. params .. "\r\nSignature: sig1=:" .. sign(base) .. ":\r\n\r\n" .. (body or "")
  end
end

return M
