// Validates a GLB with the Khronos glTF validator; prints the JSON report. Usage: node gltf_validate.js file.glb
const fs = require("fs");
const validator = require("gltf-validator");
validator
  .validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])), { maxIssues: 100 })
  .then((report) => { console.log(JSON.stringify(report)); })
  .catch((error) => { console.error(String(error)); process.exit(2); });
