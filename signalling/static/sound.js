// Sound on the call and check pages: the microphone's level meter before a
// call, the call page's alert beep and the check's test tone.

// A level meter: ``bar``'s width follows the loudness of ``track``. Gives the
// meter's AudioContext and stop(), which ends the drawing and closes it.
export function levelMeter(track, bar) {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let frame = 0;
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    bar.style.width = `${Math.min(100, Math.round(rms * 300))}%`;
    frame = requestAnimationFrame(draw);
  };
  frame = requestAnimationFrame(draw);
  const stop = () => {
    cancelAnimationFrame(frame);
    ctx.close();
  };
  return { ctx, stop };
}

// A few sine notes through ``ctx``. Each note is [at, frequency]: it starts
// ``at`` seconds after ``start``, rises to ``peak`` in ``rise`` seconds,
// fades out by ``fade`` and stops at ``stop``.
export function chime(ctx, start, notes, { peak, rise, fade, stop }) {
  for (const [at, freq] of notes) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, start + at);
    gain.gain.exponentialRampToValueAtTime(peak, start + at + rise);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + at + fade);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start + at);
    osc.stop(start + at + stop);
  }
}
