import torch

from untok.units import BOS, EOS, PAD, VOCAB_SIZE, StreamDecoder, decode, encode, to_bytes


def test_ids_round_trip_any_bytes():
    data = bytes(range(256)) + b"\xff\xfe invalid \xc3"
    ids = encode(data, bos=True)
    assert ids[0] == BOS and ids.dtype == torch.long
    assert decode(ids) == data


def test_specials_fit_vocab_and_are_dropped():
    assert max(BOS, EOS, PAD) < VOCAB_SIZE and VOCAB_SIZE % 8 == 0
    assert decode([BOS, 104, 105, EOS, PAD]) == b"hi"


def test_surrogateescape_restores_invalid_utf8_from_argv():
    raw = b"caf\xe9"
    as_argv = raw.decode("utf-8", errors="surrogateescape")
    assert to_bytes(as_argv) == raw


def test_stream_decoder_holds_split_characters():
    decoder = StreamDecoder()
    euro = "€".encode()
    assert decoder.feed(euro[:1]) == ""
    assert decoder.feed(euro[1:2]) == ""
    assert decoder.feed(euro[2:]) == "€"
    assert decoder.feed(b"\xff") == "\ufffd"
    assert decoder.feed(b"\xe2") == ""
    assert decoder.flush() == "\ufffd"
