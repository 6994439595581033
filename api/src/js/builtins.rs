//! The JavaScript each worker's context runs once at start: Sensu's functions, then the freeze
//! of the built-ins and the function that resets globals after each evaluation.

/// Sensu's SQE functions (its "Sensu query expressions reference", 6.9). Times are unix
/// seconds; a value that is not a finite number counts as 0, as Sensu's `toInt64` does.
pub(super) const SENSU_FUNCTIONS: &str = r#"
(function (global) {
    function utc(t) {
        var seconds = Number(t);
        return new Date((isFinite(seconds) ? Math.trunc(seconds) : 0) * 1000);
    }
    global.hour = function hour(t) { return utc(t).getUTCHours(); };
    global.minute = function minute(t) { return utc(t).getUTCMinutes(); };
    global.second = function second(t) { return utc(t).getUTCSeconds(); };
    global.weekday = function weekday(t) { return utc(t).getUTCDay(); };
    global.seconds_since = function seconds_since(t) { return Date.now() / 1000 - Number(t); };
    global.sensu = {};
})(globalThis);
"#;

/// Freezes every global present now (the built-ins, Sensu's functions and the libraries) and
/// its prototype, makes their bindings read-only, and evaluates to the function that deletes
/// the globals added since.
pub(super) const SEAL: &str = r#"
(function (global) {
    var baseline = Object.create(null);
    Object.getOwnPropertyNames(global).forEach(function (name) {
        baseline[name] = true;
        if (name === "globalThis") { return; }
        var value = global[name];
        if ((typeof value === "object" && value !== null) || typeof value === "function") {
            Object.freeze(value);
            if (value.prototype) { Object.freeze(value.prototype); }
        }
        var descriptor = Object.getOwnPropertyDescriptor(global, name);
        if (descriptor.configurable) {
            if ("value" in descriptor) { descriptor.writable = false; }
            descriptor.configurable = false;
            Object.defineProperty(global, name, descriptor);
        }
    });
    [Object.getPrototypeOf(function* () {}), Object.getPrototypeOf([][Symbol.iterator]())]
        .forEach(function (prototype) { Object.freeze(prototype); });
    return function reset() {
        var names = Object.getOwnPropertyNames(global);
        for (var idx = 0; idx < names.length; idx++) {
            if (!baseline[names[idx]]) { delete global[names[idx]]; }
        }
    };
})(globalThis)
"#;
