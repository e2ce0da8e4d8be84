// Okabe–Ito: eight colours told apart with every common colour-vision deficiency.
export const OKABE_ITO = {
  black: "#000000",
  orange: "#E69F00",
  skyBlue: "#56B4E9",
  green: "#009E73",
  yellow: "#F0E442",
  blue: "#0072B2",
  vermillion: "#D55E00",
  purple: "#CC79A7",
} as const;

export const SERIES_COLOUR = OKABE_ITO.blue;
export const BAND_FILL = "rgba(86, 180, 233, 0.22)"; // sky blue: the detector's expected band
export const FORECAST_FILL = "rgba(230, 159, 0, 0.22)"; // orange: the forecast interval
export const FORECAST_LINE = OKABE_ITO.orange;
export const MARK_COLOUR = OKABE_ITO.vermillion;

/** A sequential single-hue scale (light to dark blue) for the heatmap: order reads without hue. */
export function heatColour(share: number): string {
  const s = Math.max(0, Math.min(1, share));
  // from #f0f7fc to #08306b, interpolated in RGB
  const a = [240, 247, 252];
  const b = [8, 48, 107];
  const c = a.map((x, i) => Math.round(x + (b[i] - x) * s));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/** Text colour readable on heatColour(share). */
export function heatText(share: number): string {
  return share > 0.5 ? "#ffffff" : "#000000";
}
