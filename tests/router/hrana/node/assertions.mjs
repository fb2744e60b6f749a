// What the scenario scripts assert beyond node:assert.
import assert from "node:assert/strict";

// The error `promise` rejects with; fails the scenario if it fulfils instead.
export async function rejects(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected the call to fail");
}
