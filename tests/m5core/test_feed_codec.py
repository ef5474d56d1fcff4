import numpy as np
import pytest

from m5core.feed import decode_feed_value, encode_feed_value
from m5core.stores.base import VectorRecord, dequantize_int8, quantize_int8


def test_feed_value_round_trip():
    v = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    rec = VectorRecord("B000000001", v, 7, "b-1", "h", "de_DE", "media", 12.5)
    out = decode_feed_value(encode_feed_value(rec))
    np.testing.assert_array_equal(out.vector, v)
    assert (out.asin, out.product_version, out.bundle_version, out.locale, out.product_line) == ("B000000001", 7, "b-1", "de_DE", "media")


@pytest.mark.parametrize("value", [b"not json", b"{}", b'{"v": "!!", "dim": 3}'])
def test_malformed_feed_value_raises_value_error(value):
    with pytest.raises(ValueError, match="malformed"):
        decode_feed_value(value)


def test_int8_quantization_error_is_small():
    v = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    v /= np.linalg.norm(v)
    q, s = quantize_int8(v)
    assert q.dtype == np.int8
    assert float(np.dot(dequantize_int8(q, s), v)) > 0.999
