// JSON reader/writer: values and types, parse/dump round trips, string escapes and UTF-8,
// number forms, and malformed texts rejected with the byte offset where reading failed.
#include <gtest/gtest.h>
#include <pthread.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/json.h"

namespace lora::json {
namespace {

// Parses `text`, expecting a ParseError at `offset` whose reason contains `reason_part`.
void expect_parse_error(const std::string& text, size_t offset, const std::string& reason_part) {
  try {
    parse(text);
    ADD_FAILURE() << "parsed without error: " << text;
  } catch (const ParseError& e) {
    EXPECT_EQ(e.offset(), offset) << "text: " << text << "\nerror: " << e.what();
    EXPECT_NE(e.reason().find(reason_part), std::string::npos)
        << "text: " << text << "\nerror: " << e.what();
    EXPECT_NE(std::string(e.what()).find("byte " + std::to_string(offset)), std::string::npos)
        << e.what();
  }
}

TEST(Json, ParsesScalars) {
  EXPECT_TRUE(parse("null").is_null());
  EXPECT_TRUE(parse(" true ").as_bool());
  EXPECT_FALSE(parse("false").as_bool());
  EXPECT_EQ(parse("\"hi\"").as_string(), "hi");
  const Value i = parse("-42");
  EXPECT_TRUE(i.is_integer());
  EXPECT_EQ(i.as_int64(), -42);
  const Value d = parse("2.5e-3");
  EXPECT_TRUE(d.is_number());
  EXPECT_FALSE(d.is_integer());
  EXPECT_DOUBLE_EQ(d.as_double(), 0.0025);
  EXPECT_EQ(parse("0").as_int64(), 0);
  EXPECT_DOUBLE_EQ(parse("-0.5").as_double(), -0.5);
  EXPECT_DOUBLE_EQ(parse("1E2").as_double(), 100.0);
  EXPECT_DOUBLE_EQ(parse("1e+2").as_double(), 100.0);
}

TEST(Json, IntegersAreExactBeyondDoublePrecision) {
  // 2^53 + 1 is not a double; a byte offset this large must still read back exactly.
  const Value v = parse("9007199254740993");
  ASSERT_TRUE(v.is_integer());
  EXPECT_EQ(v.as_int64(), 9007199254740993LL);
  EXPECT_EQ(parse("9223372036854775807").as_int64(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(parse("-9223372036854775808").as_int64(), std::numeric_limits<int64_t>::min());
  // Beyond int64: kept as a double rather than rejected.
  const Value big = parse("18446744073709551616");
  EXPECT_FALSE(big.is_integer());
  EXPECT_DOUBLE_EQ(big.as_double(), 18446744073709551616.0);
  EXPECT_THROW(big.as_int64(), InputError);
  // A double with an integral value converts; a fractional one does not.
  EXPECT_EQ(parse("3.0").as_int64(), 3);
  EXPECT_THROW(parse("3.5").as_int64(), InputError);
}

TEST(Json, ParsesNestedStructuresInOrder) {
  const Value v = parse(R"( { "b" : [1, 2.5, "x", [], {}], "a": {"k": null}, "c": true } )");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.size(), 3u);
  const Object& members = v.as_object();
  EXPECT_EQ(members[0].first, "b");  // insertion order, not sorted
  EXPECT_EQ(members[1].first, "a");
  EXPECT_EQ(members[2].first, "c");
  const Value* b = v.find("b");
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->size(), 5u);
  EXPECT_EQ(b->as_array()[0].as_int64(), 1);
  EXPECT_DOUBLE_EQ(b->as_array()[1].as_double(), 2.5);
  EXPECT_EQ(b->as_array()[2].as_string(), "x");
  EXPECT_TRUE(b->as_array()[3].is_array());
  EXPECT_EQ(b->as_array()[3].size(), 0u);
  EXPECT_TRUE(b->as_array()[4].is_object());
  EXPECT_TRUE(v.find("a")->find("k")->is_null());
  EXPECT_EQ(v.find("missing"), nullptr);
}

TEST(Json, WrongTypeAccessThrowsInputError) {
  const Value v = parse("[1]");
  EXPECT_THROW(v.as_string(), InputError);
  EXPECT_THROW(v.as_object(), InputError);
  EXPECT_THROW(v.find("x"), InputError);
  EXPECT_THROW(parse("\"s\"").as_double(), InputError);
  EXPECT_THROW(parse("1").as_bool(), InputError);
  try {
    parse("{}").as_array();
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("expected array, got object"), std::string::npos)
        << e.what();
  }
}

TEST(Json, DumpIsCompactAndKeepsOrder) {
  Value v = Value::object();
  v.set("step", 10);
  v.set("loss", 2.5);
  v.set("name", "run \"a\"");
  v.set("ok", true);
  v.set("none", nullptr);
  Value arr = Value::array();
  arr.push_back(1);
  arr.push_back(-2);
  v.set("dims", arr);
  EXPECT_EQ(dump(v),
            R"({"step":10,"loss":2.5,"name":"run \"a\"","ok":true,"none":null,"dims":[1,-2]})");
  // set() replaces an existing key in place.
  v.set("step", 11);
  EXPECT_EQ(dump(v).substr(0, 10), R"({"step":11)");
  EXPECT_EQ(v.size(), 6u);
}

TEST(Json, RoundTripsThroughDumpAndParse) {
  const std::string texts[] = {
      R"({"a":[1,2,{"b":null}],"c":"\u00e9\n\t\"\\","d":-0.125,"e":1e+300,"f":false})",
      R"([[],[[]],{},"",0,-1,123456789012345])",
      R"("\u0001\u001f")",
  };
  for (const std::string& text : texts) {
    const Value v = parse(text);
    const std::string once = dump(v);
    EXPECT_EQ(parse(once), v) << text;
    EXPECT_EQ(dump(parse(once)), once) << text;  // dump is a fixed point
  }
}

TEST(Json, DoublesRoundTripExactly) {
  const double values[] = {0.1,    1.0 / 3.0, -2.5e-310, 6.02214076e23, 1e-7,
                           3.4e38, 1.0e300,   -0.0,      123456.789,    5e-324};
  for (const double d : values) {
    Value v = Value(d);
    const Value back = parse(dump(v));
    EXPECT_EQ(back.as_double(), d) << dump(v);
    EXPECT_EQ(std::signbit(back.as_double()), std::signbit(d)) << dump(v);
  }
}

TEST(Json, IntegralDoublesStayDoubles) {
  EXPECT_EQ(dump(Value(2.0)), "2.0");
  EXPECT_EQ(dump(Value(-0.0)), "-0.0");
  EXPECT_EQ(dump(Value(int64_t{2})), "2");
  EXPECT_FALSE(parse(dump(Value(2.0))).is_integer());
  EXPECT_TRUE(parse(dump(Value(2))).is_integer());
  EXPECT_EQ(dump(Value(1e20)), "1e+20");
}

TEST(Json, NonFiniteDoublesAreWrittenAsNull) {
  Value v = Value::array();
  v.push_back(std::numeric_limits<double>::quiet_NaN());
  v.push_back(std::numeric_limits<double>::infinity());
  v.push_back(1.5);
  EXPECT_EQ(dump(v), "[null,null,1.5]");
}

TEST(Json, StringEscapes) {
  EXPECT_EQ(parse(R"("a\"b\\c\/d\be\ff\ng\rh\ti")").as_string(), "a\"b\\c/d\be\ff\ng\rh\ti");
  EXPECT_EQ(parse(R"("\u0041\u00e9\u20AC")").as_string(), "A\xC3\xA9\xE2\x82\xAC");
  // A surrogate pair is one code point (U+1F600), four UTF-8 bytes.
  EXPECT_EQ(parse(R"("\ud83d\ude00")").as_string(), "\xF0\x9F\x98\x80");
  // Raw UTF-8 passes through unchanged.
  EXPECT_EQ(parse("\"h\xC3\xA9llo \xF0\x9F\x98\x80\"").as_string(),
            "h\xC3\xA9llo \xF0\x9F\x98\x80");
  // Writing escapes quotes, backslashes and control characters, and keeps UTF-8 as is.
  const std::string raw = std::string("q\"b\\n\nt\tz") + '\x01' + "\x7f" + "\xC3\xA9";
  EXPECT_EQ(dump(Value(raw)), "\"q\\\"b\\\\n\\nt\\tz\\u0001\\u007f\xC3\xA9\"");
  EXPECT_EQ(parse(dump(Value(raw))).as_string(), raw);
  // An embedded NUL survives the round trip.
  const std::string with_nul("a\0b", 3);
  EXPECT_EQ(dump(Value(with_nul)), "\"a\\u0000b\"");
  EXPECT_EQ(parse(dump(Value(with_nul))).as_string(), with_nul);
}

TEST(Json, ErrorsReportByteOffsets) {
  expect_parse_error("", 0, "end of input");
  expect_parse_error("   ", 3, "end of input");
  expect_parse_error("{\"a\" 1}", 5, "expected ':'");
  expect_parse_error("{\"a\":1,}", 7, "expected a string key");
  expect_parse_error("[1,2,]", 5, "expected a JSON value");
  expect_parse_error("[1 2]", 3, "expected ',' or ']'");
  expect_parse_error("{\"a\":1 \"b\":2}", 7, "expected ',' or '}'");
  expect_parse_error("[1,2", 4, "unterminated array");
  expect_parse_error("{\"a\":1", 6, "unterminated object");
  expect_parse_error("{\"a\":1,\"a\":2}", 7, "duplicate object key \"a\"");
  expect_parse_error("\"abc", 0, "unterminated string");
  expect_parse_error("[\"a\nb\"]", 3, "control character");
  expect_parse_error("\"a\\qb\"", 3, "backslash followed by 'q'");
  expect_parse_error("\"\\u12G4\"", 5, "hex digit");
  expect_parse_error("\"\\ud83d\"", 1, "low surrogate");
  expect_parse_error("\"\\ude00\"", 1, "unpaired low surrogate");
  expect_parse_error("tru", 0, "invalid literal");
  expect_parse_error("nulx", 0, "invalid literal");
  expect_parse_error("01", 1, "leading zeros");
  expect_parse_error("-", 1, "expected a digit");
  expect_parse_error("1.", 2, "after the decimal point");
  expect_parse_error("1e", 2, "exponent");
  expect_parse_error("1e999", 0, "out of range");
  expect_parse_error("+1", 0, "expected a JSON value");
  expect_parse_error("{} x", 3, "unexpected text");
  expect_parse_error("[NaN]", 1, "expected a JSON value");
  // Invalid UTF-8: a stray continuation byte, an overlong encoding, a truncated sequence.
  expect_parse_error("\"ab\x80\"", 3, "invalid UTF-8");
  expect_parse_error("\"\xC0\xAF\"", 1, "invalid UTF-8");
  expect_parse_error("\"\xE2\x82\"", 1, "UTF-8");
  expect_parse_error("\"\xED\xA0\x80\"", 1, "invalid UTF-8");  // encoded surrogate
}

TEST(Json, RejectsExcessiveNesting) {
  const std::string deep = std::string(600, '[') + std::string(600, ']');
  expect_parse_error(deep, 128, "nesting deeper than 128 levels");
  const std::string ok = std::string(128, '[') + std::string(128, ']');
  EXPECT_NO_THROW(parse(ok));
  std::string objects;
  for (int i = 0; i < 129; ++i) objects += "{\"k\":";
  objects += "0" + std::string(129, '}');
  expect_parse_error(objects, 128 * 5, "nesting deeper");
  expect_parse_error(std::string(1000000, '['), 128, "nesting deeper");
}

// The deepest accepted documents, and a far deeper one, parse on a thread with a 256 KiB stack:
// recursion is bounded, whatever the input.
TEST(Json, DeepestDocumentsFitInASmallStack) {
  struct Job {
    int n_ok = 0;
    int n_refused = 0;
  } job;
  auto run = [](void* arg) -> void* {
    auto* j = static_cast<Job*>(arg);
    std::string arrays = std::string(128, '[') + std::string(128, ']');
    std::string objects;
    for (int i = 0; i < 64; ++i) objects += "{\"key\":[1,";  // 128 levels, objects and arrays
    objects += "null";
    for (int i = 0; i < 64; ++i) objects += "]}";
    for (const std::string* text : {&arrays, &objects}) {
      try {
        parse(*text);
        ++j->n_ok;
      } catch (const ParseError&) {
      }
    }
    try {
      parse(std::string(100000, '[') + std::string(100000, ']'));
    } catch (const ParseError&) {
      ++j->n_refused;
    }
    return nullptr;
  };
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 256 * 1024), 0);
  pthread_t thread;
  ASSERT_EQ(pthread_create(&thread, &attr, run, &job), 0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  pthread_attr_destroy(&attr);
  EXPECT_EQ(job.n_ok, 2);
  EXPECT_EQ(job.n_refused, 1);
}

TEST(Json, ParseErrorIsAnInputError) {
  EXPECT_THROW(parse("{"), InputError);
  EXPECT_THROW(parse("{"), ParseError);
}

}  // namespace
}  // namespace lora::json
