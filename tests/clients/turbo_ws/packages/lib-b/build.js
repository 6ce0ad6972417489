// A task with real outputs: a text file from the sources and 2 MiB of fresh random bytes, so an artifact
// restored from the cache is recognisable (a rebuild would not reproduce them) and large enough to stream.
const crypto = require("crypto");
const fs = require("fs");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/out.txt", "built from: " + fs.readFileSync("src.txt", "utf8"));
fs.writeFileSync("dist/random.bin", crypto.randomBytes(2 << 20));
console.log("built " + require("./package.json").name);
