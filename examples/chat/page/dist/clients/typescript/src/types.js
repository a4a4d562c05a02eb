// The types the application sees: values, options, events. No runtime code;
// every other module may import it.
export {};
