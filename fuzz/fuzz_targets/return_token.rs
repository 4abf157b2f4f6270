#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| klarna_stepup::fuzz_logic::return_token(data));
