use super::{estimate_per_char, estimate_tokens, estimate_with, Params, PARAMS};

/// Asserts that the estimate is within `tol` (a fraction) of a reference count measured with
/// tiktoken's cl100k_base (`make bench` measures the whole corpus; these pin a few cases).
fn assert_near(text: &str, cl100k: u64, tol: f64) {
    let est = estimate_tokens(text);
    let err = (est as f64 - cl100k as f64).abs() / cl100k as f64;
    assert!(
        err <= tol,
        "estimate {est} vs cl100k {cl100k} (error {err:.2} > {tol}) for {text:?}"
    );
}

#[test]
fn empty_is_zero() {
    assert_eq!(estimate_tokens(""), 0);
}

#[test]
fn any_non_empty_text_is_at_least_one_token() {
    for t in [
        " ", "\n", "\t", "a", ".", "7", "\u{200d}", "\u{fe0f}", "\0", "é", "\u{a0}",
    ] {
        assert!(estimate_tokens(t) >= 1, "{t:?}");
    }
}

#[test]
fn whitespace_only() {
    assert_eq!(estimate_tokens(" "), 1);
    assert_eq!(estimate_tokens("\n\n"), 1);
    assert!(estimate_tokens("        ") <= 2);
    assert!(estimate_tokens(" \n \n\t\n") <= 2);
    // Many separate blank lines between words still cost something each.
    let text = "a\n\nb\n\nc\n\nd";
    assert!(
        (6..=9).contains(&estimate_tokens(text)),
        "{}",
        estimate_tokens(text)
    );
}

/// Long whitespace runs cost what tiktoken's cl100k_base counts for them (measured: 100,000
/// spaces are 782 tokens, newlines 3,125, tabs 6,250, CRLF pairs 25,000, form feeds 100,000,
/// alternating space/newline 50,000 per 100,000 pairs) within a factor the limits can live
/// with, never near zero.
#[test]
fn whitespace_runs_are_counted() {
    let within = |text: &str, cl100k: u64, low: f64, high: f64| {
        let est = estimate_tokens(text) as f64;
        let r = est / cl100k as f64;
        assert!(
            (low..=high).contains(&r),
            "{est} vs cl100k {cl100k} for {:?}...",
            text.get(..8).unwrap_or(text)
        );
    };
    within(&" ".repeat(100_000), 782, 0.9, 1.2);
    within(&"\n".repeat(100_000), 3_125, 0.9, 2.1);
    within(&"\t".repeat(100_000), 6_250, 0.9, 1.2);
    within(&"\r\n".repeat(100_000), 25_000, 0.9, 1.5);
    within(&"\u{c}".repeat(100_000), 100_000, 0.9, 1.2);
    within(&"\u{a0}".repeat(100_000), 12_500, 0.9, 1.2);
    within(&" \n".repeat(100_000), 50_000, 0.9, 1.9);
    within(&"\n\n    ".repeat(100_000), 100_001, 0.9, 1.2);
    within(&" \t".repeat(100_000), 99_999, 0.8, 1.2);
    // Inside text too: padding between two words.
    within(&format!("a{}b", " ".repeat(100_000)), 784, 0.9, 1.2);
    // Short runs keep their flat costs (the corpus calibration).
    assert_eq!(estimate_tokens("\n    "), 1);
    assert_eq!(estimate_tokens("a\n\n    b"), 3);
}

#[test]
fn digits_are_grouped_by_three() {
    assert_eq!(estimate_tokens("7"), 1);
    assert_eq!(estimate_tokens("123"), 1);
    assert_near("123456789", 3, 0.0);
    assert_near("1234567890123", 5, 0.25);
    let long = "9".repeat(3000);
    let est = estimate_tokens(&long);
    assert!((800..=1200).contains(&est), "{est}");
}

#[test]
fn english_prose() {
    assert_near("Hello, world!", 4, 0.0);
    assert_near("The quick brown fox jumps over the lazy dog.", 10, 0.15);
    let para = "Rate limiting is easy to describe and surprisingly hard to get right. \
                A token bucket refills at a steady rate and every request takes something \
                out of it; when the bucket is empty, the client has to wait.";
    // about 4.4 characters per token for ordinary English
    let est = estimate_tokens(para) as f64;
    let chars = para.chars().count() as f64;
    assert!((3.6..=5.4).contains(&(chars / est)), "{est}");
}

#[test]
fn long_words_cost_more_than_short_ones() {
    let short = estimate_tokens("cat");
    let long = estimate_tokens("internationalization");
    let very_long = estimate_tokens("pneumonoultramicroscopicsilicovolcanoconiosis");
    assert_eq!(short, 1);
    assert!(long > short && long <= 6, "{long}");
    assert!(very_long > long && very_long <= 15, "{very_long}");
}

#[test]
fn camel_case_and_acronyms() {
    assert_near("fetchWithRetry(url, options)", 7, 0.15);
    assert_near("HTTP JSON API", 3, 0.34);
    assert!(estimate_tokens("parseHttpRequestHeaderValue") >= 4);
}

#[test]
fn code_snippet() {
    let code = "fn main() {\n    let xs: Vec<u32> = (0..10).map(|i| i * i).collect();\n    \
                for (i, x) in xs.iter().enumerate() {\n        if x % 2 == 0 {\n            \
                println!(\"{i}: {x}\");\n        }\n    }\n}\n";
    assert_near(code, 65, 0.2);
}

#[test]
fn json_body() {
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":16}"#;
    assert_near(body, 31, 0.15);
}

#[test]
fn cjk_costs_about_a_token_per_character() {
    let zh = "你好，世界！今天天气很好。";
    assert_near(zh, 16, 0.25);
    let ja = "こんにちは、世界。";
    assert!((5..=10).contains(&estimate_tokens(ja)));
    let ko = "안녕하세요 세계";
    assert_near(ko, 9, 0.25);
    // far more than bytes/4 would suggest per character
    let many = zh.repeat(50);
    assert!(estimate_tokens(&many) >= many.chars().count() as u64);
}

#[test]
fn other_scripts() {
    assert_near("Привет, как дела? Всё хорошо.", 17, 0.2);
    assert_near("नमस्ते दुनिया", 13, 0.25);
    let ar = estimate_tokens("مرحبا بك في المدينة");
    assert!((8..=18).contains(&ar), "{ar}");
    let de = estimate_tokens("Über die Brücke gehen wir später.");
    assert!((8..=16).contains(&de), "{de}");
}

#[test]
fn emoji_cost_several_tokens() {
    let party = estimate_tokens("🎉🎉🎉");
    assert!((6..=10).contains(&party), "{party}");
    // a ZWJ family sequence: 4 pictographs and 3 joiners (cl100k: 18 tokens)
    let family = estimate_tokens("👨\u{200d}👩\u{200d}👧\u{200d}👦");
    assert!((11..=20).contains(&family), "{family}");
}

#[test]
fn appending_text_never_lowers_the_estimate() {
    let pieces = [
        "Hello",
        ", ",
        "world",
        "! ",
        "123",
        "4567",
        " ",
        "你好",
        "🎉",
        "\n\n    ",
        "fn",
        "(x)",
        " Привет",
        " déjà",
        "vu",
        " ...",
        "\t",
        "ABC",
        "def",
    ];
    let mut text = String::new();
    let mut last = 0;
    for p in pieces.iter().cycle().take(200) {
        text.push_str(p);
        let est = estimate_tokens(&text);
        assert!(
            est + 1 >= last,
            "estimate fell from {last} to {est} at {text:?}"
        );
        last = est.max(last);
    }
}

#[test]
fn repetition_scales_linearly() {
    let unit = "The gateway reads the body, estimates tokens (about 1,024) and picks a tier.\n";
    let one = estimate_tokens(unit);
    let hundred = estimate_tokens(&unit.repeat(100));
    assert!(one >= 10);
    assert!(
        hundred >= 95 * one && hundred <= 105 * one,
        "{one} {hundred}"
    );
}

#[test]
fn very_long_input_does_not_overflow() {
    // 4 MiB, past the largest body the filter parses.
    let big = "a".repeat(4 << 20);
    let est = estimate_tokens(&big);
    assert!(est > 0 && est < (4 << 20));
    let mixed = "lorem ipsum 12345 你好 🎉 {\"k\": [1, 2]}\n".repeat(100_000);
    let est = estimate_tokens(&mixed);
    assert!(est > 1_000_000 && est < mixed.len() as u64, "{est}");
}

#[test]
fn costs_saturate_instead_of_overflowing() {
    let huge = Params {
        word_short: u64::MAX,
        word_extra_per_char: u64::MAX,
        han_per_char: u64::MAX,
        digit_group: u64::MAX,
        punct_first: u64::MAX,
        newline_run: u64::MAX,
        ..PARAMS
    };
    let text = "supercalifragilistic 你好 123456 ;;; \n\n x".repeat(10);
    assert_eq!(estimate_with(&text, &huge), u64::MAX / 1000);
}

#[test]
fn invalid_looking_and_control_input_is_handled() {
    let text: String = (0u32..0x3000).filter_map(char::from_u32).collect();
    let est = estimate_tokens(&text);
    assert!(est > 1000, "{est}");
    assert!(estimate_tokens("\u{10ffff}\u{e0001}\u{fffd}") >= 1);
}

/// The byte-run fast path gives exactly what feeding every character through the per-character
/// state machine gives, on text mixing every ASCII byte with the non-ASCII classes.
#[test]
fn prop_fast_path_matches_per_character_reference() {
    let pieces = [
        "a",
        "z",
        "A",
        "Z",
        "m",
        "Q",
        "0",
        "9",
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "\r\n",
        "\u{b}",
        "\u{c}",
        "\0",
        "\u{7f}",
        ".",
        ",",
        "(",
        "\"",
        "_",
        "é",
        "É",
        "ß",
        "\u{301}",
        "ж",
        "Ж",
        "م",
        "न",
        "你",
        "か",
        "한",
        "。",
        "—",
        "🎉",
        "\u{200d}",
        "\u{fe0f}",
        "\u{a0}",
        "\u{3000}",
        "×",
        "\u{10ffff}",
        "Hello",
        "camelCase",
        "HTTPServer",
        "getHTTP",
        "déjàVu",
        "xÀy",
        "    ",
        "\n    ",
        "1234567",
        " 12",
        "...",
        "!a",
        "a.b",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Costs times 1000, so that a difference of one milli-token shows after rounding.
    let fine = Params {
        word_short: 875_000,
        word_extra_per_char: 300_000,
        word_capital: 225_001,
        caps_per_char: 350_003,
        latin_accent: 2_525_007,
        cyrillic_word: 1_200_011,
        cyrillic_per_char: 300_013,
        arabic_word: 2_325_017,
        arabic_per_char: 400_019,
        digit_group: 875_023,
        punct_first: 825_029,
        punct_next: 200_031,
        punct_attached: 425_037,
        space_before_digit: 1_300_041,
        space_run: 975_043,
        newline_run: 950_047,
        indent: 425_053,
        ws_space: 8_059,
        ws_tab: 63_061,
        ws_newline: 63_067,
        ws_cr: 250_071,
        ws_nbsp: 125_073,
        ws_wide: 500_079,
        ws_other: 1_000_083,
        ws_switch: 400_089,
        ..PARAMS
    };
    for round in 0..crate::testutil::iters(3000) {
        let len = (next() % 40) as usize;
        let mut text = String::new();
        for _ in 0..len {
            let i = (next() % pieces.len() as u64) as usize;
            text.push_str(pieces.get(i).copied().unwrap_or("a"));
        }
        for p in [&PARAMS, &fine] {
            assert_eq!(
                estimate_with(&text, p),
                estimate_per_char(&text, p),
                "round {round}: {text:?}"
            );
        }
    }
    // Every ASCII byte after every ASCII byte, and next to a non-ASCII letter.
    for a in 0u8..128 {
        for b in 0u8..128 {
            for text in [
                format!("{}{}", char::from(a), char::from(b)),
                format!("x{}{}é", char::from(a), char::from(b)),
                format!("é{}{}Ab", char::from(a), char::from(b)),
            ] {
                assert_eq!(
                    estimate_tokens(&text),
                    estimate_per_char(&text, &PARAMS),
                    "{text:?}"
                );
            }
        }
    }
}

/// The prose fast path (`prose.rs`: eight bytes at a time, words of every length from 1 to 20
/// letters, all-caps, capitalised and camelCase, separated by the gaps it handles and by ones it
/// hands back) gives exactly what every character through the general path gives.
#[test]
fn prose_fast_path_matches_the_per_char_path() {
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let gaps = [
        " ", " ", " ", ", ", ". ", "  ", ",", ".\n", " 7", "; ", "é ",
    ];
    for round in 0..crate::testutil::iters(3000) {
        let mut text = String::new();
        for _ in 0..next(60) {
            let len = 1 + next(20) as usize;
            let shape = next(6);
            for i in 0..len {
                let c = char::from(b'a' + next(26) as u8);
                let upper = match shape {
                    0 => true,
                    1 => i == 0,
                    2 => i < 3,
                    3 => i == len / 2,
                    _ => false,
                };
                text.push(if upper { c.to_ascii_uppercase() } else { c });
            }
            let g = gaps
                .get(next(gaps.len() as u64) as usize)
                .copied()
                .unwrap_or(" ");
            text.push_str(g);
        }
        assert_eq!(
            estimate_tokens(&text),
            estimate_per_char(&text, &PARAMS),
            "round {round}: {text:?}"
        );
    }
}

/// The block path (`prose::blocks`: clean prose eight bytes at a time, handing back at a word
/// start) gives exactly what every character through the general path gives, on long prose
/// that is mostly clean (so blocks run for long stretches) with a disruption now and then:
/// block boundaries fall at every offset of words of every length, capitals, marks and the
/// gaps it hands back.
#[test]
fn prose_blocks_match_the_per_char_path() {
    let mut rng = crate::testutil::Rng::new(0x51DE_CAFE_0000_0011);
    let gaps = [
        " ", " ", " ", " ", " ", " ", ", ", ". ", ". ", ",", ".", "  ", ".\n", " 7", "'", "-",
        " \"", "é ", ";", " (",
    ];
    let fine = Params {
        word_short: 875_000,
        word_extra_per_char: 300_007,
        word_capital: 225_001,
        punct_first: 825_029,
        ..PARAMS
    };
    for round in 0..crate::testutil::iters(2000) {
        let mut text = String::new();
        let clean = rng.below(4) > 0;
        for _ in 0..rng.below(120) {
            let len = 1 + rng.below(14);
            let shape = rng.below(12);
            for i in 0..len {
                let c = char::from(b'a' + rng.below(26) as u8);
                let upper = match shape {
                    0..=2 => i == 0,
                    3 => true,
                    4 if !clean => i == len / 2,
                    _ => false,
                };
                text.push(if upper { c.to_ascii_uppercase() } else { c });
            }
            let g = if clean {
                rng.below(6)
            } else {
                rng.below(gaps.len())
            };
            text.push_str(gaps.get(g).copied().unwrap_or(" "));
        }
        for p in [&PARAMS, &fine] {
            assert_eq!(
                estimate_with(&text, p),
                estimate_per_char(&text, p),
                "round {round}: {text:?}"
            );
        }
    }
    // The block path does run on clean prose (and hands back at a word start).
    let prose = "The quick brown fox jumps over the lazy dog, twice. Then it rests. ".repeat(4);
    let (at, cost) = super::prose::blocks(&PARAMS, prose.as_bytes(), 0);
    assert!(at > 200 && cost > 0, "{at} {cost}");
    assert!(prose.as_bytes().get(at.wrapping_sub(1)) == Some(&b' '));
}
