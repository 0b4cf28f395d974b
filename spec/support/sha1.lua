-- Pure-Lua SHA-1 and base64 for the specs: lets the handshake spec compute the
-- expected Sec-WebSocket-Accept itself (RFC 6455 4.2.2) without trusting the server
-- or shelling out. Uses LuaJIT's `bit` library; speed does not matter here.

local bit = require "bit"
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rol, tobit, tohex = bit.rol, bit.tobit, bit.tohex
local byte, char, rep, concat = string.byte, string.char, string.rep, table.concat

local M = {}

local function be32(s, i)
  local a, b, c, d = byte(s, i, i + 3)
  return tobit(a * 0x1000000 + b * 0x10000 + c * 0x100 + d)
end

-- Returns the 20-byte binary digest of `msg`.
function M.binary(msg)
  local len = #msg
  -- Padding: 0x80, zeros up to 56 mod 64, then the bit length as 64-bit big endian.
  local bits = len * 8
  local hi = math.floor(bits / 0x100000000)
  local lo = bits % 0x100000000
  local pad = char(0x80) .. rep("\0", (55 - len) % 64)
  local lenbytes = {}
  for shift = 24, 0, -8 do lenbytes[#lenbytes + 1] = char(math.floor(hi / 2 ^ shift) % 256) end
  for shift = 24, 0, -8 do lenbytes[#lenbytes + 1] = char(math.floor(lo / 2 ^ shift) % 256) end
  msg = msg .. pad .. concat(lenbytes)
  assert(#msg % 64 == 0)

  local h0, h1, h2, h3, h4 =
    tobit(0x67452301), tobit(0xEFCDAB89), tobit(0x98BADCFE), tobit(0x10325476), tobit(0xC3D2E1F0)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do w[i] = be32(msg, chunk + i * 4) end
    for i = 16, 79 do w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1) end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then
        f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
      elseif i < 40 then
        f, k = bxor(b, c, d), 0x6ED9EBA1
      elseif i < 60 then
        f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
      else
        f, k = bxor(b, c, d), 0xCA62C1D6
      end
      local t = tobit(rol(a, 5) + f + e + k + w[i])
      e, d, c, b, a = d, c, rol(b, 30), a, t
    end
    h0, h1, h2, h3, h4 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d), tobit(h4 + e)
  end
  local out = {}
  for _, h in ipairs({ h0, h1, h2, h3, h4 }) do
    local hex = tohex(h)
    for i = 1, 8, 2 do out[#out + 1] = char(tonumber(hex:sub(i, i + 1), 16)) end
  end
  return concat(out)
end

function M.hex(msg)
  return (M.binary(msg):gsub(".", function(c) return string.format("%02x", byte(c)) end))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function M.base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1)
      .. (b and B64:sub(c3 + 1, c3 + 1) or "=") .. (c and B64:sub(c4 + 1, c4 + 1) or "=")
  end
  return concat(out)
end

-- RFC 6455 4.2.2: base64(SHA-1(key .. GUID)).
function M.accept_key(key)
  return M.base64(M.binary(key .. "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
end

return M
