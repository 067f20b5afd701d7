// Microphone samples at the AudioContext's rate -> 16 kHz float32 blocks of ~100 ms, posted to
// the page. Resamples by linear interpolation when the context does not run at 16 kHz.
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.target = options.processorOptions.targetRate;
    this.step = sampleRate / this.target; // input samples per output sample
    this.pos = 0; // position of the next output sample, in input samples from `prev`
    this.prev = 0;
    this.out = [];
    this.block = Math.round(this.target / 10);
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    if (this.step === 1) {
      for (let i = 0; i < input.length; i++) this.out.push(input[i]);
    } else {
      // samples: prev (index 0), then input (indices 1..n)
      const n = input.length;
      while (this.pos <= n) {
        const i = Math.floor(this.pos), frac = this.pos - i;
        const a = i === 0 ? this.prev : input[i - 1];
        const b = i >= n ? input[n - 1] : input[i];
        this.out.push(a + (b - a) * frac);
        this.pos += this.step;
      }
      this.pos -= n;
      this.prev = input[n - 1];
    }
    while (this.out.length >= this.block) {
      this.port.postMessage(new Float32Array(this.out.splice(0, this.block)));
    }
    return true;
  }
}
registerProcessor("capture", Capture);
